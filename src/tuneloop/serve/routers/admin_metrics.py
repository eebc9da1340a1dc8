"""Admin routes for the live view (the `admin` scope): a metrics summary and what the gateway serves.

GET /admin/metrics/summary?window_s=60   per model and variant: QPS, latency and TTFT percentiles,
                                         tokens/s, error and 429 rates, queue time; per served model:
                                         running, waiting, KV-cache usage
GET /admin/gateway                       the caller's key (id, name, scopes), served models, routes

Everything is read from the app's own Prometheus registry (the numbers /metrics exports), not a
separate store. Counters are cumulative, so rates and windowed percentiles come from the difference
between now and a snapshot kept from an earlier call (the console polls); the first call has only
the totals since the server started and no rates.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from fastapi import APIRouter, Depends, Query
from prometheus_client import CollectorRegistry

from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.metrics import Sample

router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuthFirst)
KEEP_S = 900.0  # snapshots older than this are dropped


def snapshot(registry: CollectorRegistry) -> dict[Sample, float]:
    """Every sample of the registry by (name, labels)."""
    out: dict[Sample, float] = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _baseline(
    history: deque[tuple[float, dict[Sample, float]]], now: float, window_s: float
) -> tuple[float, dict[Sample, float]] | None:
    """The newest snapshot at least `window_s` old, else the oldest one (None when there is none)."""
    while history and now - history[0][0] > KEEP_S:
        history.popleft()
    older = [h for h in history if now - h[0] >= window_s]
    if older:
        return older[-1]
    return history[0] if history else None


def _series(snap: dict[Sample, float], name: str, by: tuple[str, ...] = ("model_name", "variant")):
    """{(labels in `by`...): {other labels: value}} for one sample name."""
    out: dict[tuple[str, ...], dict[tuple[tuple[str, str], ...], float]] = {}
    for (n, labels), v in snap.items():
        if n != name:
            continue
        d = dict(labels)
        group = tuple(d.get(k, "") for k in by)
        rest = tuple((k, val) for k, val in labels if k not in by)
        out.setdefault(group, {})[rest] = v
    return out


def _delta(now: dict, then: dict | None) -> dict:
    if then is None:
        return dict(now)
    return {k: v - then.get(k, 0.0) for k, v in now.items()}


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the open top bucket: the highest finite bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _percentiles(now: dict, then: dict | None, name: str) -> dict[tuple[str, ...], dict[str, Any]]:
    cur, old = _series(now, f"{name}_bucket"), _series(then, f"{name}_bucket") if then else {}
    out = {}
    for group, buckets in cur.items():
        d = _delta(buckets, old.get(group))
        pairs = [(float(dict(k)["le"]), v) for k, v in d.items()]
        count = max((v for _, v in pairs), default=0.0)
        out[group] = {
            "count": int(count),
            **{f"p{int(q * 100)}": quantile(q, pairs) for q in (0.5, 0.9, 0.99)},
        }
    return out


def summarize(now: dict[Sample, float], then: dict[Sample, float] | None, seconds: float | None) -> dict:
    """Per (model, variant) numbers over the window (or since start, with no rates, when `then` is None)."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}

    def row(group: tuple[str, ...]) -> dict[str, Any]:
        return rows.setdefault(group, {"model": group[0], "variant": group[1]})

    old_requests = _series(then, "tuneloop_requests_total") if then else {}
    for group, by_status in _series(now, "tuneloop_requests_total").items():
        d = _delta(by_status, old_requests.get(group))
        total = sum(d.values())
        errors = sum(v for k, v in d.items() if int(dict(k)["status"]) >= 500)
        limited = sum(v for k, v in d.items() if int(dict(k)["status"]) == 429)
        r = row(group)
        r.update(
            requests=int(total),
            errors=int(errors),
            rate_limited=int(limited),
            error_rate=errors / total if total else 0.0,
            rate_limited_rate=limited / total if total else 0.0,
            qps=total / seconds if seconds else None,
        )
    old_tokens = _series(then, "vllm:generation_tokens_total") if then else {}
    for group, v in _series(now, "vllm:generation_tokens_total").items():
        tokens = sum(_delta(v, old_tokens.get(group)).values())
        row(group).update(generated_tokens=int(tokens), tokens_per_s=tokens / seconds if seconds else None)
    for key, name in (
        ("latency_s", "vllm:e2e_request_latency_seconds"),
        ("ttft_s", "vllm:time_to_first_token_seconds"),
        ("queue_s", "vllm:request_queue_time_seconds"),
    ):
        for group, p in _percentiles(now, then, name).items():
            row(group)[key] = p
    return {"window_s": seconds, "variants": sorted(rows.values(), key=lambda r: (r["model"], r["variant"]))}


def _engines(gw: Gateway, now: dict[Sample, float]) -> list[dict[str, Any]]:
    """Per served model: the engine's running/waiting/KV usage (the gauges) and the gateway's gate."""
    gauges = {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_cache_usage": "vllm:gpu_cache_usage_perc",
        "prefix_cache_hit_rate": "vllm:gpu_prefix_cache_hit_rate",
    }
    values = {k: _series(now, n, ("model_name",)) for k, n in gauges.items()}
    out = []
    for name, served in sorted(gw.models.items()):
        item: dict[str, Any] = {
            "model": name,
            "version": served.version,
            "gate_running": served.gate.running,
            "gate_waiting": served.gate.waiting,
            "max_concurrency": served.gate.max_concurrency,
            "max_queue": served.gate.max_queue,
        }
        for k, series in values.items():
            v = series.get((name,))
            item[k] = next(iter(v.values())) if v else None
        out.append(item)
    return out


@router.get("/metrics/summary")
def metrics_summary(
    window_s: float = Query(60.0, ge=1, le=KEEP_S),
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    history = gw.console_snapshots
    now_t, now = time.monotonic(), snapshot(gw.metrics.registry)
    base = _baseline(history, now_t, window_s)
    history.append((now_t, now))
    if base is None or now_t - base[0] <= 0:
        summary = summarize(now, None, None)
    else:
        summary = summarize(now, base[1], now_t - base[0])
    rejected: dict[str, int] = {}  # by reason, summed over models (the counter is per model too)
    for (n, k), v in now.items():
        if n == "tuneloop_rejected_requests_total":
            reason = dict(k).get("reason", "")
            rejected[reason] = rejected.get(reason, 0) + int(v)
    return {
        "object": "metrics.summary",
        "time": time.time(),
        **summary,
        "engines": _engines(gw, now),
        "rejected_total": rejected,
    }


@router.get("/gateway")
def gateway(key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)) -> dict:
    return {
        "key": {"id": key.id, "name": key.name, "scopes": list(key.scopes)},
        "models": [{"name": n, "version": s.version} for n, s in sorted(gw.models.items())],
        "routes": [
            {
                "name": r.name,
                "variants": [{"model": m, "weight": w} for m, w in r.variants],
                "shadow": r.shadow,
            }
            for r in gw.routes.values()
        ],
        "auth": gw.config.auth.enabled,
    }
