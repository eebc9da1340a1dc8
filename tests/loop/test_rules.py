"""The loop config's errors (typed, naming the key); the gate's and canary's rules are in test_gate_stats.py
and test_canary_stats.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import ConfigError
from tuneloop.loop.config import LoopConfig, check_files, parse_duration

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
