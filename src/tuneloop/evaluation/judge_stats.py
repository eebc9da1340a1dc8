"""Numbers from pairwise judgments: win rate with a confidence interval, paired values for a gate's
test, position bias, and agreement with reference-based metrics.

Convention everywhere: answer `a` is the one under test (the candidate), `b` the baseline
(production); a judgment's value is +1 when a wins, -1 when b wins, 0 for a tie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from tuneloop.evaluation.judge import Judgment


class WinRate(NamedTuple):
    """(wins + ties / 2) / n with its interval; unpacks as `rate, low, high, n = win_rate(...)`."""

    rate: float
    ci_low: float
    ci_high: float
    n: int


def paired_values(judgments: Sequence[Judgment]) -> list[int]:
    """+1 / 0 / -1 per item, in order: what a paired test (sign test, bootstrap) takes."""
    return [j.value for j in judgments]


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval. With ties counted as half a success the per-item score is in [0, 1],
    and no [0, 1] variable with mean p has a variance above the Bernoulli's p(1-p): the interval is
    conservative then, and unlike a bootstrap it does not collapse when every item ties."""
    if n <= 0:
        raise ValueError("an interval needs at least one judgment")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(judgments: Sequence[Judgment], confidence: float = 0.95) -> WinRate:
    """How often `a` beats `b`, ties counting half, with a two-sided `confidence` interval."""
    n = len(judgments)
    wins = sum(j.value > 0 for j in judgments)
    ties = sum(j.value == 0 for j in judgments)
    low, high = wilson(wins + ties / 2, n, confidence)
    return WinRate((wins + ties / 2) / n, low, high, n)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class PositionBias:
    """Over the single-order verdicts that picked a winner: how often it was the answer shown first.
    An unbiased judge is near 0.5; `biased` when a fair coin would rarely give a rate this far off."""

    decided: int  # single-order verdicts naming a winner (not tie, not invalid)
    first_won: int
    first_rate: float | None
    p_value: float
    biased: bool
    consistent: float | None  # share of items whose two orders gave the same winner
    ties_single: int  # single-order verdicts of "tie"
    invalid: int  # single-order verdicts with no readable verdict after the retry
    retried: int  # single-order verdicts that needed the retry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_bias(judgments: Sequence[Judgment], confidence: float = 0.95) -> PositionBias:
    orders = [o for j in judgments for o in j.orders]
    decided = [o for o in orders if o.winner != "tie"]
    first = sum(o.winner == o.shown_first for o in decided)
    p = binomial_two_sided(first, len(decided))
    n = len(judgments)
    return PositionBias(
        decided=len(decided),
        first_won=first,
        first_rate=first / len(decided) if decided else None,
        p_value=p,
        biased=bool(decided) and p < 1 - confidence,
        consistent=sum(j.consistent for j in judgments) / n if n else None,
        ties_single=sum(o.said == "tie" for o in orders),
        invalid=sum(o.invalid for o in orders),
        retried=sum(o.retried for o in orders),
    )


@dataclass
class Agreement:
    """On the items where a reference-based metric tells the two answers apart, how often the judge
    picks the one the metric scores higher. `rate` counts a judge's tie as not agreeing;
    `rate_decided` leaves those items out."""

    metric: str
    differ: int  # items where the metric's scores of a and b differ
    agree: int
    disagree: int  # the judge picked the lower-scored answer
    judge_tie: int
    rate: float | None
    rate_decided: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(
    judgments: Sequence[Judgment], scores_a: Sequence[float], scores_b: Sequence[float], metric: str
) -> Agreement:
    if not len(judgments) == len(scores_a) == len(scores_b):
        raise ValueError("one metric score per judgment and answer")
    agree = disagree = tie = 0
    for j, sa, sb in zip(judgments, scores_a, scores_b, strict=True):
        if sa == sb:
            continue
        better = 1 if sa > sb else -1
        if j.value == 0:
            tie += 1
        elif j.value == better:
            agree += 1
        else:
            disagree += 1
    differ = agree + disagree + tie
    return Agreement(
        metric,
        differ,
        agree,
        disagree,
        tie,
        agree / differ if differ else None,
        agree / (agree + disagree) if agree + disagree else None,
    )


@dataclass
class JudgeSummary:
    """What `tuneloop eval --judge` reports: counts, rates, the win rate's interval, bias, agreement."""

    judge: str
    rubric: str
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    ci_low: float
    ci_high: float
    confidence: float
    position: PositionBias
    agreement: list[Agreement]
    usage: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    judgments: Sequence[Judgment],
    judge: str,
    rubric: str,
    usage: dict[str, float],
    agreements: Sequence[Agreement] = (),
    confidence: float = 0.95,
) -> JudgeSummary:
    rate = win_rate(judgments, confidence)
    values = paired_values(judgments)
    return JudgeSummary(
        judge=judge,
        rubric=rubric,
        n=len(values),
        wins=values.count(1),
        ties=values.count(0),
        losses=values.count(-1),
        win_rate=rate.rate,
        ci_low=rate.ci_low,
        ci_high=rate.ci_high,
        confidence=confidence,
        position=position_bias(judgments, confidence),
        agreement=list(agreements),
        usage=dict(usage),
    )
