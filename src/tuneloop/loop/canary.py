"""Canary: a share of live traffic to the candidate, watched, then promote or roll back.

The gateway serves two names that follow registry aliases (`production_model` -> NAME@production,
`candidate_model` -> NAME@candidate) behind one route. The loop moves the `candidate` alias, asks
the gateway to reload, and sets the route weights through the admin API. It watches the request
log (errors, latency) and the feedback store (ratings) of the requests since the canary started,
per variant; `judge` turns those numbers into wait / promote / rollback.

The loop looks every `poll` for hours, so every test is a confidence sequence (loop/stats.py), valid
at all looks at once: a candidate no better than production is promoted at most 1 - confidence of
the time however often it looks (benchmarks/loop_decisions_sim.py drives this very function):
- ratings: each rated answer counts once, as a thumbs-up when its mean rating >= curate.positive_min;
  promote when the thumbs-up rate's improvement is shown above `rating_margin` (after `window`, with
  `min_feedback` rated answers per variant), roll back when it is shown below;
- errors: roll back when the candidate's error rate is shown above `max_error_rate`, or above
  production's by more than `max_error_increase`;
- latency: roll back when the candidate's p95 is shown above `max_latency_ratio` x production's
  (confidence sequences of both p95s, not one p95 of a handful of requests);
- no decision by `max_wait`: roll back (production stays; the candidate was not shown better).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.interactions.feedback import FeedbackStore
from tuneloop.interactions.requestlog import read_log
from tuneloop.loop.config import CanarySettings
from tuneloop.loop.stats import Interval, nearest_rank, quantile_bounds, rate_above, rate_difference

LATENCY_Q = 0.95


@dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)  # of the successful requests
    ratings: int = 0  # rated answers
    ups: int = 0  # rated answers whose mean rating is a thumbs-up
    mean_rating: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def up_rate(self) -> float | None:
        return self.ups / self.ratings if self.ratings else None

    @property
    def p95_latency_s(self) -> float | None:
        return nearest_rank(self.latencies, LATENCY_Q)

    def to_json(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p95_latency_s": r(self.p95_latency_s),
            "ratings": self.ratings,
            "ups": self.ups,
            "up_rate": r(self.up_rate),
            "mean_rating": r(self.mean_rating),
        }


def window_stats(
    log_path: Path,
    database_url: str | None,
    route: str,
    since: float,
    variants: tuple[str, str],
    positive_min: int = 4,
) -> dict[str, VariantStats]:
    """Per variant, the requests to `route` since `since`: count, errors, latencies, rated answers."""
    records = [r for r in read_log(log_path, since=since).values() if r.get("model") == route]
    ratings: dict[str, list[int]] = {}
    for f in FeedbackStore(database_url).list():
        ratings.setdefault(f.response_id, []).append(f.rating)
    out = {}
    for variant in variants:
        mine = [r for r in records if r.get("variant") == variant]
        ok = [r for r in mine if r.get("status") == 200]
        # one vote per answer (its raters' mean): ten ratings of one answer are not ten answers
        means = [sum(x) / len(x) for r in mine if (x := ratings.get(r["response_id"]))]
        out[variant] = VariantStats(
            requests=len(mine),
            errors=sum(1 for r in mine if (r.get("status") or 500) >= 500),
            latencies=[float(r["latency_s"]) for r in ok if r.get("latency_s") is not None],
            ratings=len(means),
            ups=sum(1 for m in means if m >= positive_min),
            mean_rating=(sum(means) / len(means)) if means else None,
        )
    return out


@dataclass
class CanaryCheck:
    """One test of the canary at one look, with its numbers."""

    name: str  # thumbs_up | error_rate | error_increase | latency_p95
    status: str  # pass | fail | undecided | too_few
    production: float | None
    candidate: float | None
    n: tuple[int, int]  # (candidate, production)
    low: float | None
    high: float | None
    rule: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {
            "name": self.name,
            "status": self.status,
            "production": r(self.production),
            "candidate": r(self.candidate),
            "n": list(self.n),
            "low": r(self.low),
            "high": r(self.high),
            "rule": self.rule,
            **self.extra,
        }


@dataclass
class Verdict:
    action: str  # wait | promote | rollback
    reason: str
    checks: list[CanaryCheck] = field(default_factory=list)

    def numbers(self) -> dict[str, Any]:
        return {"checks": [c.to_json() for c in self.checks]}


def thumbs_check(prod: VariantStats, cand: VariantStats, s: CanarySettings) -> CanaryCheck:
    i = rate_difference(cand.ups, cand.ratings, prod.ups, prod.ratings, s.confidence)
    need = max(s.min_feedback, 1)
    rule = f"promote when low > {s.rating_margin:+.3f}, roll back when high < {s.rating_margin:+.3f}"
    if min(cand.ratings, prod.ratings) < need:
        status = "too_few"
    elif i.low is not None and i.low > s.rating_margin:
        status = "pass"
    elif i.high is not None and i.high < s.rating_margin:
        status = "fail"
    else:
        status = "undecided"
    return CanaryCheck(
        "thumbs_up",
        status,
        prod.up_rate,
        cand.up_rate,
        (cand.ratings, prod.ratings),
        i.low,
        i.high,
        rule,
        {"diff": _r(i.estimate), "need": need},
    )


def error_checks(prod: VariantStats, cand: VariantStats, s: CanarySettings) -> list[CanaryCheck]:
    shown, evidence = rate_above(cand.errors, cand.requests, s.max_error_rate, s.confidence)
    limit = CanaryCheck(
        "error_rate",
        "fail" if shown else "pass",
        prod.error_rate,
        cand.error_rate,
        (cand.requests, prod.requests),
        None,
        None,
        f"roll back when shown above {s.max_error_rate:.3f}",
        {"e_value": _r(min(evidence, 1e12)), "limit": s.max_error_rate},
    )
    i: Interval = rate_difference(cand.errors, cand.requests, prod.errors, prod.requests, s.confidence)
    worse = i.low is not None and cand.requests > 0 and prod.requests > 0 and i.low > s.max_error_increase
    increase = CanaryCheck(
        "error_increase",
        "fail" if worse else "pass",
        prod.error_rate,
        cand.error_rate,
        (cand.requests, prod.requests),
        i.low,
        i.high,
        f"roll back when low > {s.max_error_increase:+.3f}",
        {"diff": _r(i.estimate)},
    )
    return [limit, increase]


def latency_check(prod: VariantStats, cand: VariantStats, s: CanarySettings) -> CanaryCheck:
    """Both p95s get a confidence sequence at half the error each, so 'shown slower' is at the level."""
    half = 1 - (1 - s.confidence) / 2
    c_low, c_high = quantile_bounds(cand.latencies, LATENCY_Q, half)
    p_low, p_high = quantile_bounds(prod.latencies, LATENCY_Q, half)
    slow = c_low is not None and p_high is not None and c_low > s.max_latency_ratio * p_high
    return CanaryCheck(
        "latency_p95",
        "fail" if slow else "pass",
        prod.p95_latency_s,
        cand.p95_latency_s,
        (len(cand.latencies), len(prod.latencies)),
        c_low,
        c_high,
        f"roll back when the candidate's low > {s.max_latency_ratio:g} x production's high",
        {"production_low": _r(p_low), "production_high": _r(p_high)},
    )


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def judge(prod: VariantStats, cand: VariantStats, s: CanarySettings, elapsed_s: float) -> Verdict:
    """The canary rule at one look: health can end it at any time, ratings after `window`."""
    thumbs = thumbs_check(prod, cand, s)
    checks = [thumbs]
    if cand.requests >= s.min_requests:
        checks += [*error_checks(prod, cand, s), latency_check(prod, cand, s)]
        for c in checks[1:]:
            if c.status == "fail":
                return Verdict("rollback", _health_reason(c, s), checks)
        if thumbs.status == "fail":
            return Verdict(
                "rollback", f"thumbs-up rate shown below production's{_margin(s)}: {_thumbs(thumbs)}", checks
            )
    watched = elapsed_s >= s.seconds("window") and cand.requests >= s.min_requests
    if watched and thumbs.status == "pass":
        return Verdict(
            "promote",
            f"thumbs-up rate shown above production's{_margin(s)}: {_thumbs(thumbs)}; "
            f"healthy: {_health(cand, prod)}",
            checks,
        )
    if watched and s.min_feedback == 0 and thumbs.status != "fail":
        return Verdict(
            "promote",
            f"healthy: {_health(cand, prod)} (canary.min_feedback=0: ratings not "
            f"required; {_thumbs(thumbs)})",
            checks,
        )
    if elapsed_s >= s.seconds("max_wait"):
        return Verdict(
            "rollback",
            f"no decision after {elapsed_s:.0f}s (canary.max_wait): {cand.requests} "
            f"candidate requests (need {s.min_requests}); {_thumbs(thumbs)}",
            checks,
        )
    return Verdict("wait", f"watching: {_thumbs(thumbs)}", checks)


def _margin(s: CanarySettings) -> str:
    return f" by more than {s.rating_margin:+.3f}" if s.rating_margin else ""


def _thumbs(c: CanaryCheck) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    n_c, n_p = c.n
    text = f"thumbs-up {pct(c.candidate)} of {n_c} vs {pct(c.production)} of {n_p}"
    if c.status == "too_few":
        return f"{text} rated answers (each variant needs {c.extra['need']})"
    return f"{text}, difference {c.extra['diff']:+.3f} in [{c.low:+.3f}, {c.high:+.3f}]"


def _health(cand: VariantStats, prod: VariantStats) -> str:
    p95 = lambda v: "-" if v is None else f"{v:.3f}s"  # noqa: E731
    return (
        f"error rate {cand.error_rate:.1%} vs {prod.error_rate:.1%}, "
        f"p95 {p95(cand.p95_latency_s)} vs {p95(prod.p95_latency_s)}"
    )


def _health_reason(c: CanaryCheck, s: CanarySettings) -> str:
    n_c, n_p = c.n
    if c.name == "error_rate":
        return (
            f"candidate error rate {c.candidate:.1%} of {n_c} requests is shown above "
            f"{s.max_error_rate:.1%} (e-value {c.extra['e_value']:g})"
        )
    if c.name == "error_increase":
        return (
            f"candidate error rate {c.candidate:.1%} ({n_c} requests) vs production {c.production:.1%} "
            f"({n_p}): increase in [{c.low:+.3f}, {c.high:+.3f}], above {s.max_error_increase:+.3f}"
        )
    return (
        f"candidate p95 latency {c.candidate:.3f}s (at least {c.low:.3f}s, {n_c} requests) is shown above "
        f"{s.max_latency_ratio:g}x production's p95 {c.production:.3f}s (at most "
        f"{c.extra['production_high']:.3f}s, {n_p} requests)"
    )


class GatewayAdmin:
    """The gateway's admin API: reload (re-resolve aliases) and route weights."""

    def __init__(self, s: CanarySettings):
        import httpx  # the serve extra: only a canary talks to the gateway

        key = os.environ.get(s.admin_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = s.gateway_url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=s.timeout_s)
        self.key_env = s.admin_key_env

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx  # as in __init__

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise TuneloopError(
                f"the gateway at {self.url} did not answer {method} {path}: {e}",
                hint="is `tuneloop serve` running? check canary.gateway_url",
            ) from None
        if r.status_code in (401, 403):
            raise TuneloopError(
                f"the gateway refused {method} {path} ({r.status_code})",
                hint=f"put a key with the admin scope in ${self.key_env}",
            )
        if r.status_code >= 400:
            raise TuneloopError(f"the gateway answered {r.status_code} to {method} {path}: {r.text[:300]}")
        return r.json()

    def reload(self) -> list[str]:
        return self._call("POST", "/admin/reload").get("reloaded", [])

    def set_route(self, route: str, weights: dict[str, float]) -> dict[str, Any]:
        body = {"variants": [{"model": m, "weight": w} for m, w in weights.items()]}
        return self._call("PUT", f"/admin/routes/{route}", json=body)

    def close(self) -> None:
        self.http.close()
