"""Canary: a share of live traffic to the candidate, watched, then promote or roll back.

The gateway serves two names that follow registry aliases (`production_model` -> NAME@production,
`candidate_model` -> NAME@candidate) behind one route. The loop moves the `candidate` alias, asks
the gateway to reload, and sets the route weights through the admin API. It watches the request
log (errors, latency) and the feedback store (ratings) of the requests since the canary started,
per variant; `judge` turns those numbers into wait / promote / rollback.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.loop.config import CanarySettings


@dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    p95_latency_s: float | None = None
    ratings: int = 0
    mean_rating: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 4)}


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def window_stats(log_path: Path, database_url: str | None, route: str, since: float,
                 variants: tuple[str, str]) -> dict[str, VariantStats]:  # fmt: skip
    """Per variant, the requests to `route` since `since`: count, errors, p95 latency, ratings."""
    from tuneloop.loop.collect import read_log
    from tuneloop.serve.feedback import FeedbackStore

    records = [r for r in read_log(log_path, since=since).values() if r.get("model") == route]
    ratings: dict[str, list[int]] = {}
    for f in FeedbackStore(database_url).list():
        ratings.setdefault(f.response_id, []).append(f.rating)
    out = {}
    for variant in variants:
        mine = [r for r in records if r.get("variant") == variant]
        ok = [r for r in mine if r.get("status") == 200]
        scores = [x for r in mine for x in ratings.get(r["response_id"], [])]
        out[variant] = VariantStats(
            requests=len(mine), errors=sum(1 for r in mine if (r.get("status") or 500) >= 500),
            p95_latency_s=_p95([float(r["latency_s"]) for r in ok if r.get("latency_s") is not None]),
            ratings=len(scores), mean_rating=(sum(scores) / len(scores)) if scores else None,
        )  # fmt: skip
    return out


@dataclass
class Verdict:
    action: str  # wait | promote | rollback
    reason: str


def judge(prod: VariantStats, cand: VariantStats, s: CanarySettings, elapsed_s: float) -> Verdict:
    """The canary rule. Errors end it early; everything else is judged after the window."""
    if cand.requests >= s.min_requests and cand.error_rate > s.max_error_rate:
        return Verdict("rollback", f"candidate error rate {cand.error_rate:.1%} > {s.max_error_rate:.1%}")
    enough = cand.requests >= s.min_requests and cand.ratings >= s.min_feedback
    if elapsed_s < s.seconds("window") or not enough:
        if elapsed_s >= s.seconds("max_wait"):
            return Verdict("rollback", f"too little canary traffic: {cand.requests} requests "
                           f"(need {s.min_requests}), {cand.ratings} ratings (need {s.min_feedback})")  # fmt: skip
        return Verdict("wait", "watching")
    if cand.error_rate > s.max_error_rate:
        return Verdict("rollback", f"candidate error rate {cand.error_rate:.1%} > {s.max_error_rate:.1%}")
    if cand.p95_latency_s is not None and prod.p95_latency_s:
        ratio = cand.p95_latency_s / prod.p95_latency_s
        if ratio > s.max_latency_ratio:
            return Verdict("rollback", f"candidate p95 latency {cand.p95_latency_s:.3f}s is {ratio:.2f}x "
                           f"production's {prod.p95_latency_s:.3f}s (max {s.max_latency_ratio:g}x)")  # fmt: skip
    rated = cand.mean_rating is not None and prod.mean_rating is not None
    if rated and cand.mean_rating < prod.mean_rating - s.rating_tolerance:  # type: ignore[operator]
        return Verdict(
            "rollback", f"candidate rated {cand.mean_rating:.2f} < production {prod.mean_rating:.2f}"
        )
    return Verdict("promote", f"healthy: error rate {cand.error_rate:.1%}, p95 {cand.p95_latency_s}, "
                   f"rating {cand.mean_rating} vs production {prod.mean_rating}")  # fmt: skip


class GatewayAdmin:
    """The gateway's admin API: reload (re-resolve aliases) and route weights."""

    def __init__(self, s: CanarySettings):
        import httpx

        key = os.environ.get(s.admin_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = s.gateway_url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=s.timeout_s)
        self.key_env = s.admin_key_env

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise TuneloopError(f"the gateway at {self.url} did not answer {method} {path}: {e}",
                                hint="is `tuneloop serve` running? check canary.gateway_url") from None  # fmt: skip
        if r.status_code in (401, 403):
            raise TuneloopError(f"the gateway refused {method} {path} ({r.status_code})",
                                hint=f"put a key with the admin scope in ${self.key_env}")  # fmt: skip
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
