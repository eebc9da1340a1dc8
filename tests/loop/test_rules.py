"""The gate's and the canary's decision rules, and the config's errors (typed, naming the key)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import ConfigError
from tuneloop.loop.canary import VariantStats, judge
from tuneloop.loop.config import CanarySettings, LoopConfig, check_files, parse_duration
from tuneloop.loop.gate import Scores, decide


def scores(frozen, feedback=None):
    return Scores(frozen, feedback, "contains_answer", "token_f1", 10, 0 if feedback is None else 5)


# ------------------------------------------------------------------ gate


def test_gate_passes_a_candidate_better_by_the_margin_without_frozen_regression():
    d = decide(scores(0.5, 0.2), scores(0.5, 0.6), margin=0.1, tolerance=0.0)
    assert d.passed and d.improvement == pytest.approx(0.4) and d.frozen_delta == 0


def test_gate_fails_an_improvement_below_the_margin():
    d = decide(scores(0.5, 0.2), scores(0.5, 0.25), margin=0.1, tolerance=0.0)
    assert not d.passed and "needs at least 0.1000" in d.reason


def test_gate_fails_a_frozen_regression_beyond_tolerance_even_when_feedback_improves():
    d = decide(scores(0.5, 0.2), scores(0.4, 0.9), margin=0.1, tolerance=0.05)
    assert not d.passed and "regresses on the frozen set by 0.1000" in d.reason
    assert decide(scores(0.5, 0.2), scores(0.46, 0.9), margin=0.1, tolerance=0.05).passed


def test_gate_uses_the_frozen_set_when_no_feedback_was_held_out():
    assert decide(scores(0.5), scores(0.6), margin=0.05, tolerance=0).passed
    d = decide(scores(0.5), scores(0.5), margin=0.05, tolerance=0)
    assert not d.passed and "frozen set" in d.reason
    assert decide(scores(0.5), scores(0.5), margin=0.0, tolerance=0).passed  # margin 0: not worse is enough


# ------------------------------------------------------------------ canary


def canary(**kw) -> CanarySettings:
    base = {
        "production_model": "p",
        "candidate_model": "c",
        "window": "60s",
        "min_requests": 10,
        "min_feedback": 0,
    }
    return CanarySettings(**{**base, **kw})


def test_canary_rolls_back_early_on_errors():
    v = judge(VariantStats(50), VariantStats(10, errors=3), canary(max_error_rate=0.05), elapsed_s=5)
    assert v.action == "rollback" and "30.0%" in v.reason


def test_canary_waits_for_the_window_and_for_traffic():
    assert judge(VariantStats(50), VariantStats(20), canary(), elapsed_s=10).action == "wait"
    assert judge(VariantStats(50), VariantStats(3), canary(), elapsed_s=100).action == "wait"
    v = judge(VariantStats(50), VariantStats(3), canary(), elapsed_s=241)  # max_wait = 4 x window
    assert v.action == "rollback" and "too little canary traffic" in v.reason


def test_canary_promotes_a_healthy_candidate_rated_at_least_as_well():
    prod = VariantStats(50, 0, 0.2, 10, 3.5)
    v = judge(prod, VariantStats(12, 0, 0.25, 4, 4.0), canary(min_feedback=4), elapsed_s=61)
    assert v.action == "promote"


def test_canary_rolls_back_slow_or_worse_rated_candidates():
    prod = VariantStats(50, 0, 0.2, 10, 4.0)
    slow = judge(prod, VariantStats(12, 0, 0.5, 4, 4.0), canary(max_latency_ratio=1.5), elapsed_s=61)
    assert slow.action == "rollback" and "2.50x" in slow.reason
    worse = judge(prod, VariantStats(12, 0, 0.2, 4, 3.0), canary(), elapsed_s=61)
    assert worse.action == "rollback" and "rated 3.00 < production 4.00" in worse.reason
    assert (
        judge(prod, VariantStats(12, 0, 0.2, 4, 3.9), canary(rating_tolerance=0.2), elapsed_s=61).action
        == "promote"
    )


def test_canary_waits_for_the_feedback_it_needs():
    assert (
        judge(VariantStats(50), VariantStats(20, ratings=1), canary(min_feedback=3), elapsed_s=61).action
        == "wait"
    )


# ------------------------------------------------------------------ config


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("2h") == 7200
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("soon", "--every")


def test_config_errors_name_the_key_and_line(tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text("gate:\n  frozen_eval: f.jsonl\ncurate:\n  min_agrement: 0.8\n  negative_max: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(LoopConfig, bad)
    assert f"{bad}:4" in str(e.value) and "did you mean 'curate.min_agreement'" in str(e.value)
    bad.write_text("gate:\n  frozen_eval: f.jsonl\ncurate:\n  negative_max: 4\n")
    with pytest.raises(ConfigError, match=r"curate.negative_max \(4\) must be below curate.positive_min"):
        load_config(LoopConfig, bad)
    with pytest.raises(ConfigError, match=r"canary\.window"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f"}, "canary": {"production_model": "p",
                                 "candidate_model": "c", "window": "forever"}})  # fmt: skip
    with pytest.raises(ConfigError, match="invalid regular expression"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f"}}, ["curate.injection_patterns=['(']"])
    with pytest.raises(ConfigError, match="lists an objective twice"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f"}}, ["retrain.objectives=[sft, sft]"])


def test_missing_files_are_named_by_their_key(tmp_path):
    cfg = load_config(LoopConfig, {"gate": {"frozen_eval": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(ConfigError, match=r"gate\.frozen_eval .* does not exist"):
        check_files(cfg)
    (tmp_path / "f.jsonl").write_text("{}\n")
    cfg = load_config(LoopConfig, {"gate": {"frozen_eval": str(tmp_path / "f.jsonl")},
                                   "retrain": {"old_data": [str(tmp_path / "old.jsonl")]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"retrain.old_data\[0\]"):
        check_files(cfg)


def test_cli_user_mistakes_exit_2_without_a_traceback(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(f"gate:\n  frozen_eval: {tmp_path / 'missing.jsonl'}\n")
    cases = [
        (["loop", "run", "--model", "bot"], "needs a config"),
        (["loop", "run", "--model", "bot", "--config", str(tmp_path / "none.yaml")], "does not exist"),
        (["loop", "run", "--model", "bot", "--config", str(cfg)], "gate.frozen_eval"),
        (["loop", "run", "--model", "bot", "--config", str(cfg), "canary.share=2"], "canary.share"),
        (["loop", "run", "--model", "bot", "--config", str(cfg), "--every", "often"], "not a duration"),
        (["loop", "status", "--model", "bot"], "no loop has run for 'bot'"),
        (["feedback", "review", "--approve-all", "--reject-all"], "exclude each other"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
