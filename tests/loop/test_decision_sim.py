"""The decisions' error rates, proven by simulation through the loop's own rules (loop/simulate.py drives
canary.judge and gate.criteria_of + decide): 500 canaries and 500 gates per case, seeded.

No true difference: a promotion is a false one, at most 5 %. A true regression: rolled back (canary)
or rejected (gate) at least 95 % of the time. A true improvement of 10 points: found most of the time.
benchmarks/loop_decisions_sim.py runs the same at the defaults and more traffic levels (the table)."""

from __future__ import annotations

import numpy as np

from tuneloop.loop.config import CanarySettings, GateSettings
from tuneloop.loop.simulate import paired_binary_scores, paired_f1_scores, simulate_canary, simulate_gate

N = 500


def canaries(production: float, candidate: float, n: int = N, seed: int = 0) -> list:
    # share 0.5 and 600 rated answers an hour: the same rules as the defaults, decided in hours, not days;
    # a look every 10 minutes (the tests of any number of looks hold for any schedule)
    s = CanarySettings(production_model="p", candidate_model="c", share=0.5, max_wait="6h")
    rng = np.random.default_rng(seed)
    return [simulate_canary(s, production, candidate, 600, rng, poll_s=600) for _ in range(n)]


def test_canary_promotes_a_no_better_candidate_at_most_5_percent_of_the_time():
    runs = canaries(0.6, 0.6)
    false_promotions = sum(r.action == "promote" for r in runs) / N
    assert false_promotions <= 0.05, false_promotions
    assert all(r.candidate_ratings >= 30 or r.action == "rollback" for r in runs)


def test_canary_rolls_back_a_worse_candidate_and_finds_a_better_one():
    worse = canaries(0.6, 0.5, seed=1)
    assert sum(r.action == "rollback" for r in worse) / N >= 0.95
    assert np.median([r.elapsed_s for r in worse]) < 3 * 3600  # by evidence, well before max_wait
    better = canaries(0.6, 0.7, n=200, seed=2)
    assert sum(r.action == "promote" for r in better) / 200 >= 0.9


def gates(gain: float, n: int = N, seed: int = 0, kind: str = "binary", heldout: int = 100) -> list[str]:
    s = GateSettings(frozen_eval="f.jsonl", bootstrap_resamples=1000, feedback_metric="token_f1")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "binary":
            feedback = paired_binary_scores(heldout, 0.6, 0.6 + gain, 0.2, rng)
        else:
            feedback = paired_f1_scores(heldout, gain, 0.15, rng)
        # 400 frozen questions, 4 % answered differently (fewer, or more changes, and a harmless candidate
        # is rejected more often: benchmarks/loop_decisions_sim.py has the numbers)
        frozen = paired_binary_scores(400, 0.7, 0.7, 0.04, rng)
        out.append(simulate_gate(s, feedback, frozen))
    return out


def test_gate_passes_a_no_better_candidate_at_most_5_percent_of_the_time():
    for kind in ("binary", "f1"):
        outcomes = gates(
            0.0, kind=kind, n=N if kind == "binary" else 200, heldout=100 if kind == "binary" else 60
        )
        passed = outcomes.count("passed") / len(outcomes)
        assert passed <= 0.05, (kind, passed)


def test_gate_rejects_a_worse_candidate_and_finds_a_better_one():
    worse = gates(-0.1, seed=1)
    assert worse.count("failed") / N >= 0.95
    better = gates(0.1, n=200, seed=2, heldout=300)
    assert better.count("passed") / 200 >= 0.8
