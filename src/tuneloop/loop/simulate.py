"""Simulated canaries and gates, decided by the loop's own rules (canary.judge, gate.criteria_of + decide).

What the decisions' error rates and speed are, with a known truth: a candidate with the same
thumbs-up rate as production (every promotion is a false one), a better one, a worse one. Used by
tests/loop/test_decision_sim.py (fast, in CI) and benchmarks/loop_decisions_sim.py (the table).

Canary: rated answers arrive as a Poisson process (`rated_per_hour` over both variants), each on the
candidate with probability `canary.share`, each a thumbs-up with its variant's rate; every answer is
a request (no errors, no latency: those rules are tested on their own). The loop looks every `poll`;
a look with no new answer and no deadline passed gives the same verdict, so it is skipped.
Gate: held-out and frozen examples scored 0/1 (contains_answer) or in [0, 1] (token F1) for both
models, paired through a shared per-example difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuneloop.loop.canary import VariantStats, judge
from tuneloop.loop.config import CanarySettings, GateSettings
from tuneloop.loop.gate import Scored, criteria_of, decide


@dataclass
class CanaryRun:
    action: str  # promote | rollback
    elapsed_s: float
    candidate_ratings: int
    production_ratings: int
    reason: str


def simulate_canary(
    s: CanarySettings,
    production_up: float,
    candidate_up: float,
    rated_per_hour: float,
    rng: np.random.Generator,
    poll_s: float | None = None,
) -> CanaryRun:
    """One canary, looked at every `poll_s` (default: canary.poll) until it promotes or rolls back."""
    poll = poll_s if poll_s is not None else s.seconds("poll")
    window, max_wait = s.seconds("window"), s.seconds("max_wait")
    prod, cand = VariantStats(), VariantStats()
    elapsed, seen_window = 0.0, False
    while True:
        elapsed += poll
        arrivals = int(rng.poisson(rated_per_hour * poll / 3600))
        new = arrivals > 0
        if new:
            to_cand = int(rng.binomial(arrivals, s.share))
            for v, k, rate in ((cand, to_cand, candidate_up), (prod, arrivals - to_cand, production_up)):
                if k:
                    v.requests += k
                    v.ratings += k
                    v.ups += int(rng.binomial(k, rate))
        deadline = (elapsed >= window and not seen_window) or elapsed >= max_wait
        seen_window = seen_window or elapsed >= window
        if not (new or deadline):
            continue  # the same numbers and no deadline passed: the same verdict as the last look
        verdict = judge(prod, cand, s, elapsed)
        if verdict.action != "wait":
            return CanaryRun(verdict.action, elapsed, cand.ratings, prod.ratings, verdict.reason)


def _scored(metric: str, values: np.ndarray) -> Scored:
    return Scored(metric, [{"id": str(i), "score": float(v)} for i, v in enumerate(values)])


def paired_binary_scores(
    n: int, production: float, candidate: float, discordant: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 scores of n examples with these accuracies and this share of examples where the two differ."""
    gain = candidate - production
    only_c, only_p = (discordant + gain) / 2, (discordant - gain) / 2
    both = production - only_p
    if min(only_c, only_p, both, 1 - both - only_c - only_p) < -1e-12:
        raise ValueError("these accuracies cannot have that many discordant examples")
    cells = np.clip([both, only_c, only_p, 1 - both - only_c - only_p], 0, 1)  # rounding: -1e-17 is 0
    cell = rng.choice(4, size=n, p=cells / cells.sum())
    return np.isin(cell, (0, 2)).astype(float), np.isin(cell, (0, 1)).astype(float)


def paired_f1_scores(
    n: int, gain: float, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Token-F1-like scores in [0, 1]: a shared per-example difficulty, each model's own noise, and
    `gain` added to the candidate (gain 0: the two are exchangeable, so no true difference)."""
    base = rng.beta(2, 2, size=n)
    prod = np.clip(base + rng.normal(0, noise, n), 0, 1)
    cand = np.clip(base + gain + rng.normal(0, noise, n), 0, 1)
    return prod, cand


def simulate_gate(
    s: GateSettings, heldout: tuple[np.ndarray, np.ndarray], frozen: tuple[np.ndarray, np.ndarray]
) -> str:
    """The gate's outcome on these scores (production, candidate per set), through criteria_of + decide."""
    prod = {"frozen": _scored(s.metric, frozen[0]), "feedback": _scored(s.feedback_metric, heldout[0])}
    cand = {"frozen": _scored(s.metric, frozen[1]), "feedback": _scored(s.feedback_metric, heldout[1])}
    d = decide(
        criteria_of(prod, cand, s),
        s.confidence,
        margin=s.margin,
        tolerance=s.tolerance,
        resamples=s.bootstrap_resamples,
        seed=s.seed,
    )
    return d.outcome
