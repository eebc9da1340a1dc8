"""The statistics behind the loop's decisions: intervals for the gate, sequential tests for the canary.

Pure functions of counts and per-example values (numpy and the standard library), so the loop, the
simulation (benchmarks/loop_decisions_sim.py, tests/loop/test_decision_sim.py) and the unit tests all
run this code and nothing else.

The gate looks once at a fixed set of examples, scored for both models (paired):
- 0/1 values (contains_answer, exact_match, a judge's win): Newcombe's hybrid score interval for the
  difference of paired proportions (his method 10, Stat Med 1998; recommended by Fagerland et al.
  2014), and McNemar's exact test on the discordant pairs for the p-value;
- other values (token F1, ROUGE-L): a BCa bootstrap interval of the mean paired difference.

The canary looks every few seconds for hours, and a fixed-sample interval checked at every look would
promote a no-better candidate far more often than its level says (benchmarks/loop_decisions_sim.py
measures it). So it uses confidence sequences, intervals that hold at every look at once:
P(the truth is ever outside) <= 1 - confidence, however often the loop looks and whenever it stops.
- two rates (thumbs-up, errors: candidate minus production): the normal-mixture boundary of Robbins,
  i.e. the mSPRT of Johari et al. (2017, the "always valid p-values" of online A/B testing), on the
  difference of the rates with a plug-in variance; asymptotic, so decisions wait for a minimum count
  and the simulation checks the error rate where the counts are small;
- one rate against a limit (errors vs max_error_rate) and a quantile (p95 latency): the likelihood
  ratio against the null mixed over a grid of alternatives, a nonnegative (super)martingale under the
  null, hence exact at every n by Ville's inequality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

_NORMAL = NormalDist()


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level: 1.96 for 0.95."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must be between 0 and 1")
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; None where there is nothing to estimate (no examples)."""

    estimate: float | None
    low: float | None
    high: float | None
    method: str
    p_value: float | None = None  # two-sided, against no difference (where the method has one)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# ------------------------------------------------------------------------------ gate: paired, one look


def is_binary(values: Sequence[float] | np.ndarray) -> bool:
    arr = np.asarray(values, dtype=float)
    return bool(np.all((arr == 0) | (arr == 1)))


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs as Binomial(b + c, 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    logs = [
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) - m * math.log(2)
        for i in range(k + 1)
    ]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return min(1.0, 2 * tail)


def paired_binary(production: Sequence[float], candidate: Sequence[float], confidence: float) -> Interval:
    """candidate - production on the same examples, values 0/1: Newcombe's method 10 + McNemar."""
    p, c = _paired(production, candidate)
    if not (is_binary(p) and is_binary(c)):
        raise ValueError("paired_binary needs values that are 0 or 1")
    n = len(p)
    if n == 0:
        return Interval(None, None, None, "newcombe")
    both = int(np.sum((p == 1) & (c == 1)))
    only_c = int(np.sum((p == 0) & (c == 1)))
    only_p = int(np.sum((p == 1) & (c == 0)))
    neither = n - both - only_c - only_p
    z = z_value(confidence)
    p1, p2 = (both + only_c) / n, (both + only_p) / n  # candidate's and production's rates
    l1, u1 = wilson(both + only_c, n, z)
    l2, u2 = wilson(both + only_p, n, z)
    phi = _phi(both, only_c, only_p, neither)
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return Interval(
        diff, max(-1.0, diff - below), min(1.0, diff + above), "newcombe", mcnemar_exact(only_c, only_p)
    )


def _phi(both: int, only_c: int, only_p: int, neither: int) -> float:
    """The correlation of the two rates, with Newcombe's continuity correction of a positive one."""
    denom = (both + only_c) * (only_p + neither) * (both + only_p) * (only_c + neither)
    if not denom:
        return 0.0
    cross = both * neither - only_c * only_p
    n = both + only_c + only_p + neither
    if cross > n / 2:
        cross -= n / 2
    elif cross >= 0:
        cross = 0
    return cross / math.sqrt(denom)


def paired_bootstrap(
    production: Sequence[float],
    candidate: Sequence[float],
    confidence: float,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval:
    """candidate - production on the same examples: BCa bootstrap interval of the mean difference.

    Seeded, so the same scores always give the same decision. All-equal differences (identical
    answers, all ties) have no spread to resample: the interval is the point."""
    p, c = _paired(production, candidate)
    d = c - p
    n = len(d)
    if n == 0:
        return Interval(None, None, None, "bootstrap-bca")
    est = float(d.mean())
    if n == 1 or np.ptp(d) == 0:
        return Interval(est, est, est, "bootstrap-bca")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = d[rng.integers(0, n, size=(size, n))].mean(axis=1)
    share = float(np.mean(means < est) + 0.5 * np.mean(means == est))
    share = min(max(share, 1 / (resamples + 1)), resamples / (resamples + 1))
    z0 = _NORMAL.inv_cdf(share)
    jack = (d.sum() - d) / (n - 1)  # leave-one-out means
    dev = jack.mean() - jack
    spread = float(np.sum(dev**2))
    accel = float(np.sum(dev**3)) / (6 * spread**1.5) if spread > 0 else 0.0
    z = z_value(confidence)

    def level(zq: float) -> float:
        t = z0 + zq
        return _NORMAL.cdf(z0 + t / (1 - accel * t))

    low, high = np.quantile(means, [level(-z), level(z)])
    return Interval(est, float(low), float(high), "bootstrap-bca")


def paired_interval(
    production: Sequence[float],
    candidate: Sequence[float],
    confidence: float,
    kind: str | None = None,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval:
    """The gate's interval for a paired difference: exact-score for 0/1 values, BCa bootstrap otherwise."""
    if kind is None:
        kind = "binary" if is_binary(production) and is_binary(candidate) else "continuous"
    if kind == "binary":
        return paired_binary(production, candidate, confidence)
    return paired_bootstrap(production, candidate, confidence, resamples, seed)


def _paired(production: Sequence[float], candidate: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, c = np.asarray(production, dtype=float), np.asarray(candidate, dtype=float)
    if p.shape != c.shape or p.ndim != 1:
        raise ValueError(f"paired values need one value per example for both models ({p.shape} vs {c.shape})")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(c))):
        raise ValueError("paired values must be finite numbers")
    return p, c


# ------------------------------------------------------------------------------ canary: any number of looks


def mixture_radius(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the normal-mixture confidence sequence around an estimate of this variance.

    The mixture N(0, tau^2) over the effect of the Gaussian likelihood ratio crosses 1/alpha exactly
    when |estimate - effect| exceeds this; by Ville's inequality that happens at some look with
    probability <= alpha. tau sets the effect size it is quickest for (about tau)."""
    if variance <= 0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(
        2 * variance * (variance + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log(1 + t2 / variance))
    )


def rate_difference(k1: int, n1: int, k2: int, n2: int, confidence: float, tau: float = 0.1) -> Interval:
    """Rate 1 minus rate 2 (k successes of n each), with a confidence sequence.

    The variance uses one success and one failure added to each arm (Agresti and Caffo), so it is
    never zero (all thumbs up after three ratings is not certainty) and the interval is centred on
    the adjusted difference, which pulls small samples towards no difference."""
    if n1 == 0 or n2 == 0:
        return Interval(None, -1.0, 1.0, "mixture-cs")
    q1, q2 = (k1 + 1) / (n1 + 2), (k2 + 1) / (n2 + 2)
    variance = q1 * (1 - q1) / (n1 + 2) + q2 * (1 - q2) / (n2 + 2)
    r = mixture_radius(variance, 1 - confidence, tau)
    centre = q1 - q2
    return Interval(k1 / n1 - k2 / n2, max(-1.0, centre - r), min(1.0, centre + r), "mixture-cs")


def _log_mean_exp(values: np.ndarray) -> float:
    top = float(np.max(values))
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.mean(np.exp(values - top))))


def _log_lr(k: int, n: int, p0: float, alternatives: np.ndarray) -> float:
    """log of the likelihood ratio of k successes in n (alternatives mixed uniformly) against p0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = k * (np.log(alternatives) - math.log(p0)) + (n - k) * (
            np.log1p(-alternatives) - math.log1p(-p0)
        )
    terms = np.where(np.isnan(terms), -math.inf, terms)  # 0 * log(0) for p = 1 and no failures
    return _log_mean_exp(terms)


def rate_above(k: int, n: int, limit: float, confidence: float) -> tuple[bool, float]:
    """Is the rate shown above `limit` (k events in n)? Returns (shown, e-value).

    The alternatives are a grid above the limit, so for any true rate at or below it the mixture is
    a supermartingale: P(ever shown) <= 1 - confidence, however often one looks. The e-value says how
    many times likelier the data are under a rate above the limit (shown at 1 / (1 - confidence))."""
    if n == 0 or k == 0 or limit >= 1:
        return False, 0.0 if n else 1.0
    if limit <= 0:
        return True, math.inf  # one event proves a rate above zero
    alternatives = limit + (1 - limit) * np.arange(1, 41) / 40
    log_e = _log_lr(k, n, limit, alternatives)
    return log_e >= math.log(1 / (1 - confidence)), math.exp(min(log_e, 700.0))


_QUANTILE_GRID = np.linspace(0.005, 0.995, 199)


def quantile_bounds(
    values: Sequence[float], q: float, confidence: float
) -> tuple[float | None, float | None]:
    """A confidence sequence for the q-quantile of the distribution the values come from.

    At the true quantile, 'value <= it' is Bernoulli(q) exactly (continuous values), so the count of
    values below a candidate point is tested against q (a two-sided mixture martingale); the points
    not rejected are an interval between two order statistics. None: unbounded on that side (too
    few values to say)."""
    if not len(values):
        return None, None
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    threshold = math.log(1 / (1 - confidence))
    grid = _QUANTILE_GRID[np.abs(_QUANTILE_GRID - q) > 1e-9]

    def accepted(k: int) -> bool:
        return _log_lr(k, n, q, grid) < threshold

    # log LR(k) is convex in k (a log-sum of functions linear in k), lowest near n*q: the accepted
    # counts are one run of integers, found by bisection from there
    centre = min(
        range(max(0, math.floor(n * q)), min(n, math.ceil(n * q)) + 1), key=lambda k: _log_lr(k, n, q, grid)
    )
    if not accepted(centre):
        return None, None
    k1 = _bisect(accepted, 0, centre)  # first accepted count
    k2 = _bisect(lambda k: not accepted(k), centre, n + 1) - 1  # last accepted count
    low = float(x[k1 - 1]) if k1 >= 1 else None  # at least k1 values lie at or below the quantile
    high = float(x[k2]) if k2 + 1 <= n else None  # at most k2 do, so the (k2+1)-th lies above it
    return low, high


def _bisect(pred: Any, lo: int, hi: int) -> int:
    """The first k in [lo, hi) where pred turns true (hi if never), for pred false-then-true."""
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    if not len(values):
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])
