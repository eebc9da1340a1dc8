"""The server's own time-to-first-token, read from its Prometheus /metrics (shared by the serve benchmarks).

A load generator that reports much more than this is measuring itself (see BENCHMARKS.md, "The load
generator was the bottleneck").
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

TTFT = "vllm:time_to_first_token_seconds"


def ttft_buckets(base_url: str, model: str | None = None) -> dict[float, float]:
    """Cumulative TTFT counts by bucket upper bound (seconds), summed over variants; one model or all."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != TTFT:
            continue
        for s in family.samples:
            if s.name == TTFT + "_bucket" and (model is None or s.labels.get("model_name") == model):
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float | None]:
    """P50/P99 of the TTFTs observed between two readings, as the upper bound of the bucket that holds each."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1] if delta else 0.0
    return {
        k: next((le for le, n in delta if total and n >= q * total), None)
        for k, q in (("p50", 0.5), ("p99", 0.99))
    }
