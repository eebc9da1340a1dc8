"""The gate's statistics and rule: paired intervals (checked against published values and scipy),
edge cases (n=0, n=1, all ties, identical models), the three outcomes, and the config's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from tuneloop.config import load_config
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.loop import LoopConfig
from tuneloop.loop.config import GateSettings
from tuneloop.loop.gate import Criterion, Scored, check_frozen, criteria_of, decide
from tuneloop.loop.stats import mcnemar_exact, paired_binary, paired_bootstrap, paired_interval

from .conftest import write_jsonl


def table(both: int, only_c: int, only_p: int, neither: int) -> tuple[list[float], list[float]]:
    """Production and candidate 0/1 scores with these counts of (both right, only the candidate,
    only production, neither)."""
    prod = [1.0] * both + [0.0] * only_c + [1.0] * only_p + [0.0] * neither
    cand = [1.0] * both + [1.0] * only_c + [0.0] * only_p + [0.0] * neither
    return prod, cand


# ------------------------------------------------------------------ intervals


def test_newcombe_interval_matches_the_published_example_and_mcnemar_matches_scipy():
    # Fagerland, Lydersen & Laake, "Statistical analysis of contingency tables", ch. 8 (Cavo et al. 2012):
    # Newcombe square-and-add -0.0621 (95% CI -0.1186 to -0.0046)
    prod, cand = table(59, 6, 16, 80)
    i = paired_binary(prod, cand, 0.95)
    assert (round(i.estimate, 4), round(i.low, 4), round(i.high, 4)) == (-0.0621, -0.1186, -0.0046)
    assert i.p_value == pytest.approx(scipy.stats.binomtest(6, 22, 0.5).pvalue)
    for b, c in [(0, 0), (1, 0), (7, 2), (40, 60), (500, 450)]:
        expected = 1.0 if b + c == 0 else scipy.stats.binomtest(b, b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9), (b, c)


def test_bca_bootstrap_agrees_with_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    prod = rng.random(60)
    cand = np.clip(prod + rng.normal(0.04, 0.12, 60), 0, 1)
    mine = paired_bootstrap(prod, cand, 0.95, resamples=20000, seed=1)
    ref = scipy.stats.bootstrap((cand - prod,), np.mean, method="BCa", n_resamples=20000, random_state=0)
    assert mine.estimate == pytest.approx(float(np.mean(cand - prod)))
    assert mine.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert mine.high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    assert paired_bootstrap(prod, cand, 0.95, seed=7) == paired_bootstrap(prod, cand, 0.95, seed=7)
    wider = paired_bootstrap(prod, cand, 0.99, resamples=20000, seed=1)
    assert wider.low < mine.low and wider.high > mine.high


def test_no_examples_one_example_and_all_ties():
    empty = paired_interval([], [], 0.95)
    assert (empty.estimate, empty.low, empty.high) == (None, None, None)
    one = paired_binary([0.0], [1.0], 0.95)
    assert one.estimate == 1.0 and one.low < 0.2 and one.high == 1.0 and one.p_value == 1.0
    assert paired_bootstrap([0.2], [0.5], 0.95).low == pytest.approx(0.3)  # nothing to resample
    # identical models, 0/1 scores: the interval is symmetric around 0 and narrows with n
    small, large = (paired_binary(*table(n, 0, 0, n), 0.95) for n in (15, 150))
    assert small.estimate == 0 and small.low == pytest.approx(-small.high) and small.p_value == 1.0
    assert 0 < large.high < small.high
    # identical models, continuous scores: every difference is 0, so is the interval
    same = paired_bootstrap([0.3, 0.5, 0.9], [0.3, 0.5, 0.9], 0.95)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_bad_values_are_errors_naming_the_problem():
    with pytest.raises(ValueError, match="one value per example"):
        paired_interval([1.0, 0.0], [1.0], 0.95)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([0.1, float("nan")], [0.2, 0.3], 0.95)
    with pytest.raises(ValueError, match="0 or 1"):
        paired_binary([0.5], [1.0], 0.95)
    with pytest.raises(ValueError, match="candidate values"):
        decide([Criterion("x", "m", [1.0, 0.0], [1.0], "improve", 0.0)])


# ------------------------------------------------------------------ the rule


def crit(
    name, prod, cand, role="improve", threshold=0.0, min_examples=30, fixed=False, metric="contains_answer"
):
    return Criterion(name, metric, prod, cand, role, threshold, min_examples=min_examples, fixed=fixed)


def frozen_same(n=200):
    return crit("frozen", *table(n // 2, 2, 2, n // 2 - 4), "not_worse", 0.05, fixed=True)


def test_a_clear_improvement_without_frozen_regression_passes_with_its_numbers():
    d = decide([crit("feedback", *table(40, 30, 5, 25)), frozen_same()], 0.95, margin=0.0, tolerance=0.05)
    assert d.outcome == "passed" and d.passed, d.reason
    feedback, frozen = d.checks
    assert feedback.status == frozen.status == "pass"
    assert feedback.interval.low > 0 and d.improvement == pytest.approx(0.25)
    numbers = json.loads(json.dumps(d.numbers()))  # what decisions.jsonl holds
    assert numbers["improvement_ci"][0] == pytest.approx(feedback.interval.low, abs=1e-4)
    c = numbers["checks"][0]
    assert c["n"] == 100 and c["method"] == "newcombe" and c["p_value"] < 0.001 and c["status"] == "pass"
    assert "feedback contains_answer +0.250 [" in d.reason and "improvement shown above +0.0000" in d.reason


def test_the_margin_applies_to_the_lower_bound_not_the_point_estimate():
    # +0.10 on 40 examples: the point estimate clears a 0.02 margin, the lower bound does not
    d = decide([crit("feedback", *table(15, 8, 4, 13)), frozen_same()], margin=0.02)
    assert d.improvement == pytest.approx(0.10) and d.outcome == "failed"
    assert d.checks[0].interval.low < 0.02 < d.checks[0].interval.high
    assert "not shown: the interval straddles the bound" in d.reason


def test_a_frozen_drop_beyond_the_tolerance_fails_even_when_feedback_improves():
    drop = crit("frozen", *table(100, 2, 30, 68), "not_worse", 0.05, fixed=True)
    d = decide([crit("feedback", *table(40, 30, 5, 25)), drop])
    assert d.outcome == "failed" and [c.status for c in d.checks] == ["pass", "fail"]
    assert d.frozen_delta == pytest.approx(-0.14) and "drop within the tolerance 0.0500 shown" in d.reason


def test_a_small_frozen_set_cannot_show_a_small_tolerance_and_says_so():
    d = decide([crit("feedback", *table(40, 30, 5, 25)), crit("frozen", *table(20, 1, 1, 8), "not_worse", 0.05,
                                                              fixed=True)])  # fmt: skip
    assert d.outcome == "failed"
    assert "30 questions cannot bound a drop below about" in d.reason and "gate.tolerance" in d.reason


def test_too_few_held_out_examples_is_not_enough_evidence_not_a_rejection():
    d = decide([crit("feedback", *table(5, 12, 0, 3)), frozen_same()])  # 20 examples, all better
    assert d.outcome == "not_enough_evidence" and not d.passed
    assert d.checks[0].status == "too_few" and d.checks[0].interval.low is None  # nothing was compared
    assert "20 examples, the gate needs 30 (gate.min_examples)" in d.reason and "keep collecting" in d.reason
    # a frozen set does not grow: too small is a failure, not a wait
    small_frozen = crit("frozen", *table(5, 0, 0, 5), "not_worse", 0.05, fixed=True)
    assert decide([crit("feedback", *table(40, 30, 5, 25)), small_frozen]).outcome == "failed"
    # a shown failure wins over waiting
    drop = crit("frozen", *table(100, 2, 30, 68), "not_worse", 0.05, fixed=True)
    assert decide([crit("feedback", *table(5, 12, 0, 3)), drop]).outcome == "failed"


def test_identical_models_never_pass_a_zero_margin():
    for n in (30, 300, 3000):
        d = decide([crit("feedback", *table(n // 2, 0, 0, n - n // 2)), frozen_same()])
        assert d.outcome == "failed" and d.improvement == 0, n
    cont = [0.1, 0.4, 0.8] * 20
    d = decide([crit("feedback", cont, cont, metric="token_f1"), frozen_same()])
    assert d.outcome == "failed" and d.checks[0].interval.method == "bootstrap-bca"


def test_a_negative_margin_accepts_a_candidate_not_shown_worse_by_more():
    same = crit("feedback", *table(100, 5, 5, 90), threshold=-0.1)
    assert decide([same, frozen_same()], margin=-0.1).passed
    worse = crit("feedback", *table(100, 2, 30, 68), threshold=-0.1)
    assert decide([worse, frozen_same()], margin=-0.1).outcome == "failed"


def test_criteria_of_compares_where_the_feedback_is_else_on_the_frozen_set():
    s = GateSettings(frozen_eval="f.jsonl", min_examples=2)

    def scored(metric, values):
        return Scored(metric, [{"id": str(i), "score": v} for i, v in enumerate(values)])

    prod = {
        "frozen": scored("contains_answer", [1, 0, 1, 1]),
        "feedback": scored("token_f1", [0.2, 0.5, None]),
    }
    cand = {
        "frozen": scored("contains_answer", [1, 1, 1, 1]),
        "feedback": scored("token_f1", [0.4, 0.6, 0.9]),
    }
    improve, frozen = criteria_of(prod, cand, s)
    assert (improve.name, improve.role, improve.threshold, improve.fixed) == (
        "feedback",
        "improve",
        0.0,
        False,
    )
    assert list(improve.production) == [0.2, 0.5] and list(improve.candidate) == [
        0.4,
        0.6,
    ]  # unscored row out
    assert (frozen.name, frozen.role, frozen.threshold, frozen.fixed) == ("frozen", "not_worse", 0.05, True)
    only = criteria_of({"frozen": prod["frozen"]}, {"frozen": cand["frozen"]}, s)
    assert [(c.name, c.role) for c in only] == [("frozen", "improve")]


# ------------------------------------------------------------------ config


def test_gate_settings_defaults_and_errors(tmp_path):
    s = GateSettings(frozen_eval="f.jsonl")
    assert (s.margin, s.tolerance, s.confidence, s.min_examples) == (0.0, 0.05, 0.95, 30)
    with pytest.raises(ConfigError, match=r"gate\.confidence"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f", "confidence": 1.5}})
    with pytest.raises(ConfigError, match=r"gate\.min_examples"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f", "min_examples": 0}})
    frozen = write_jsonl(tmp_path / "frozen.jsonl", [{"messages": [{"role": "user", "content": "q"}]}] * 12)
    with pytest.raises(
        TuneloopError, match=r"has 12 questions; the gate needs at least gate.min_examples=30"
    ):
        check_frozen(GateSettings(frozen_eval=str(frozen)))
    assert check_frozen(GateSettings(frozen_eval=str(frozen), min_examples=12)) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(TuneloopError, match=r"bad.jsonl:2: not valid JSON"):
        check_frozen(GateSettings(frozen_eval=str(bad)))


# ------------------------------------------------------------------ criteria that plug in


def test_no_drop_fails_only_on_a_drop_that_is_shown():
    small_drop = crit("general:mc", *table(20, 2, 5, 23), "no_drop", 0.0, min_examples=1, fixed=True)
    big_drop = crit("general:mc", *table(10, 0, 15, 25), "no_drop", 0.0, min_examples=1, fixed=True)
    assert decide([small_drop]).outcome == "passed"  # -0.06 on 50 questions: not a significant drop
    d = decide([big_drop])
    assert d.outcome == "failed" and d.checks[0].interval.high < 0 and "a drop beyond 0.0000" in d.reason


def scored(metric, rows):
    return Scored(metric, [{"id": str(i), "question": q, "reference": r, "prediction": a, "score": s}
                           for i, (q, r, a, s) in enumerate(rows)])  # fmt: skip


def test_the_judge_plugs_in_as_a_paired_criterion_with_its_counts(tiny_llama, tmp_path):
    from tuneloop.evaluation.judge_config import JudgeConfig
    from tuneloop.loop.gate import judge_criteria

    questions = [(f"What is {i} plus {i}?", str(2 * i)) for i in range(4)]
    prod = {"frozen": scored("contains_answer", [(q, r, "I do not know.", 0.0) for q, r in questions])}
    cand = {"frozen": scored("contains_answer", [(q, r, f"It is {r}.", 1.0) for q, r in questions])}
    s = GateSettings(frozen_eval="f.jsonl", min_examples=4, judge=JudgeConfig(
        model=str(tiny_llama), reasons=False, max_tokens=4, kv_cache_gib=0.05, device="cpu",
        cache=tmp_path / "judge.sqlite", log=tmp_path / "judge.jsonl"))  # fmt: skip
    assert judge_criteria("p", "c", prod, cand, GateSettings(frozen_eval="f.jsonl")) == []  # no judge: none
    (c,) = judge_criteria("p", "c", prod, cand, s)
    assert (c.name, c.role, c.kind, c.fixed, len(c.production)) == ("judge", "improve", "binary", True, 4)
    assert all(p + q <= 1 for p, q in zip(c.production, c.candidate, strict=True))  # a win is one side's
    assert c.info["wins"] + c.info["ties"] + c.info["losses"] == 4 and c.info["judge"]
    log = [json.loads(x) for x in (tmp_path / "judge.jsonl").read_text().splitlines()]
    assert {r["shown_first"] for r in log if r["task"] == "compare"} == {"a", "b"}  # both orders asked
    check = decide([c]).checks[0].to_json()
    assert check["name"] == "judge" and check["wins"] == c.info["wins"] and check["method"] == "newcombe"


def test_general_tasks_plug_in_as_no_drop_criteria(tiny_llama):
    pytest.importorskip("lm_eval")
    pytest.importorskip("tuneloop.evaluation.lm_eval_harness")  # the general-task adapter (issue 18, C)
    from tuneloop.loop.gate import task_criteria

    assert task_criteria("p", "c", {}, {}, GateSettings(frozen_eval="f.jsonl")) == []  # no tasks: none
    s = GateSettings(frozen_eval="f.jsonl", tasks=["tuneloop_mc_en"], tasks_limit=6, device="cpu")
    (c,) = task_criteria(str(tiny_llama), str(tiny_llama), {}, {}, s)
    assert (c.name, c.role, c.fixed, len(c.production)) == ("general:tuneloop_mc_en", "no_drop", True, 6)
    assert list(c.production) == list(c.candidate)  # the same model twice: the same per-question scores
    d = decide([c])
    assert d.outcome == "passed" and "no drop shown beyond 0.0000" in d.reason


# ------------------------------------------------------------------ MLflow


def test_decisions_go_to_the_cycles_mlflow_run(registry, tmp_path):
    from tuneloop.loop.tracking import log_decision
    from tuneloop.registry import backend

    client = registry.client
    run = client.create_run(backend.experiment_id(client, registry.tracking_uri))
    run_dir = tmp_path / "run-sft"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id,
                                                  "tracking_uri": registry.tracking_uri}))  # fmt: skip
    d = decide([crit("feedback", *table(40, 30, 5, 25)), frozen_same()])
    warnings: list[str] = []
    assert log_decision(run_dir, "gate", d.outcome, d.numbers(), warnings.append) == run.info.run_id
    data = client.get_run(run.info.run_id).data
    assert data.tags["tuneloop.gate"] == "passed" and data.metrics["gate.feedback.n"] == 100
    assert data.metrics["gate.feedback.low"] == pytest.approx(d.checks[0].interval.low, abs=1e-4)
    assert data.metrics["gate.frozen.diff"] == 0 and warnings == []
    # a canary's counts are per variant
    canary = {"elapsed_s": 90.0, "checks": [{"name": "thumbs_up", "n": [300, 900], "low": 0.1, "high": 0.3}]}
    log_decision(run_dir, "canary", "promote", canary, warnings.append)
    data = client.get_run(run.info.run_id).data
    assert data.metrics["canary.thumbs_up.n_candidate"] == 300 and data.metrics["canary.elapsed_s"] == 90
    assert data.tags["tuneloop.canary"] == "promote"
    # a run not tracked in MLflow: nothing to log; a server that does not answer: a warning, not a crash
    assert log_decision(tmp_path, "gate", "passed", d.numbers(), warnings.append) is None and warnings == []
    (run_dir / "run.json").write_text(
        json.dumps({"mlflow_run_id": "nope", "tracking_uri": registry.tracking_uri})
    )
    assert log_decision(run_dir, "gate", "passed", d.numbers(), warnings.append) is None
    assert len(warnings) == 1 and "could not log the decision to MLflow run nope" in warnings[0]
