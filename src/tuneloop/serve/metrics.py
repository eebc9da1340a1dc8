"""Prometheus metrics with vLLM's names where they exist (so vLLM Grafana dashboards work).

Each app owns its registry (several apps in one process, as in tests, do not collide). Engine
gauges (running, waiting, KV usage, prefix-cache hit rate) are read from the engines, and the
gateway's gate gauges (running, waiting, their limits) from each model's gate, at scrape time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tuneloop.serve.client import EngineLoad

if TYPE_CHECKING:  # the metrics read them, never build them
    from tuneloop.serve.adapters import AdapterCache
    from tuneloop.serve.limits import ConcurrencyGate

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
LABELS = ("model_name", "variant")
Sample = tuple[str, tuple[tuple[str, str], ...]]  # a sample of a registry: (name, sorted labels)
FEEDBACK_SCORE = (1.0, 2.0, 3.0, 4.0, 5.0)  # ratings are 1-5 (thumbs up = 5, down = 1)


class _ModelGauges(Collector):
    """Gauges read at scrape time, one per attribute of a per-model object (an engine's load, a gate)."""

    def __init__(
        self, source: Callable[[], dict[str, object]], gauges: dict[str, tuple[str, str]], gpu: bool = False
    ):
        self.source, self.gauges, self.gpu = source, gauges, gpu  # gauges: attribute -> (metric name, help)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            field: GaugeMetricFamily(name, text, labels=["model_name"])
            for field, (name, text) in self.gauges.items()
        }
        for model, obj in self.source().items():
            if obj is not None:
                for field, family in families.items():
                    family.add_metric([model], float(getattr(obj, field)))
        yield from families.values()
        if self.gpu:
            yield from _gpu_memory()


ENGINE_GAUGES = {
    "running": ("vllm:num_requests_running", "Requests generating now"),
    "waiting": ("vllm:num_requests_waiting", "Requests waiting in the engine"),
    "kv_usage": ("vllm:gpu_cache_usage_perc", "KV-cache usage (1 = full)"),
    "prefix_cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate", "Prefix-cache hit rate"),
}
# the gateway's admission gate per served model (`limits.ConcurrencyGate`): in use and its bounds
GATE_GAUGES = {
    "running": ("tuneloop_gateway_requests_running", "Requests holding a gateway slot"),
    "waiting": ("tuneloop_gateway_requests_waiting", "Requests queued at the gateway for a slot"),
    "max_concurrency": ("tuneloop_gateway_max_concurrency", "Gateway slots (max_concurrency)"),
    "max_queue": ("tuneloop_gateway_max_queue", "Gateway queue bound (max_queue); beyond it 429 overloaded"),
}


class _AdapterGauges(Collector):
    """LoRA adapters per base engine (serve/adapters.py), read at scrape time: registered and resident
    (in a slot) adapters, slots, requests waiting for a slot, loads and evictions; and vLLM's
    `vllm:lora_requests_info` (value: the time of the scrape, as vLLM's)."""

    def __init__(self, source: Callable[[], Iterable[AdapterCache]]):
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        base = ["model_name"]  # the base model ("NAME/VERSION" or its folder's name)
        adapters = GaugeMetricFamily(
            "tuneloop_lora_adapters",
            "LoRA adapters: registered (served) and resident (in a slot)",
            labels=[*base, "state"],
        )
        slots = GaugeMetricFamily(
            "tuneloop_lora_slots", "Adapter slots of the engine (max_loras)", labels=base
        )
        waiting = GaugeMetricFamily(
            "tuneloop_lora_requests_waiting",
            "Requests waiting for a slot (every resident adapter busy)",
            labels=base,
        )
        loads = CounterMetricFamily("tuneloop_lora_loads", "Adapters loaded into a slot", labels=base)
        evictions = CounterMetricFamily(
            "tuneloop_lora_evictions", "Idle resident adapters unloaded to make room for another", labels=base
        )
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on LoRA requests",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        max_lora, running, wanted = 0, set(), set()
        for cache in self.source():
            label = [cache.label]
            adapters.add_metric([*label, "registered"], len(cache.registered))
            adapters.add_metric([*label, "resident"], len(cache.resident))
            slots.add_metric(label, cache.slots)
            waiting.add_metric(label, cache.waiting)
            loads.add_metric(label, cache.loads)
            evictions.add_metric(label, cache.evictions)
            max_lora = max(max_lora, cache.slots)
            running |= {n for n, k in cache.busy.items() if k > 0}
            wanted |= cache.wanted
        if max_lora:  # one sample, as vLLM's (engine names of adapters, comma-separated)
            info.add_metric([str(max_lora), ",".join(sorted(running)), ",".join(sorted(wanted))], time.time())
        yield from (adapters, slots, waiting, loads, evictions, info)


def _gpu_memory() -> Iterable[GaugeMetricFamily]:
    """Memory held by torch on each GPU; only when torch is already loaded (a local engine) and has CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    family = GaugeMetricFamily(
        "tuneloop_gpu_memory_used_bytes", "GPU memory reserved by torch", labels=["gpu"]
    )
    for i in range(torch.cuda.device_count()):
        family.add_metric([str(i)], float(torch.cuda.memory_reserved(i)))
    yield family


class Metrics:
    def __init__(
        self,
        loads: Callable[[], dict[str, EngineLoad | None]],
        gates: Callable[[], dict[str, ConcurrencyGate]] | None = None,
        adapters: Callable[[], Iterable[AdapterCache]] | None = None,  # of each engine
    ):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "tuneloop_requests", "HTTP requests by route and status", ["route", "status", *LABELS], registry=r
        )
        self.success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason",
            ["finished_reason", *LABELS],
            registry=r,
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed", LABELS, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated", LABELS, registry=r)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency",
            LABELS,
            buckets=LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to the first token", LABELS, buckets=LATENCY, registry=r
        )
        self.itl = Histogram(
            "vllm:time_per_output_token_seconds",
            "Time between output chunks",
            LABELS,
            buckets=TOKEN_LATENCY,
            registry=r,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Time queued at the gateway",
            LABELS,
            buckets=LATENCY,
            registry=r,
        )
        self.rejected = Counter(
            "tuneloop_rejected_requests",
            "Requests refused (auth, limits, overload); model_name is empty when refused before it is known",
            ["reason", "model_name"],
            registry=r,
        )
        self.feedback = Counter(
            "tuneloop_feedback",
            "Feedback received, by rating (up, down, 1-5); model_name/variant 'unknown' for answers not found",
            [*LABELS, "rating"],
            registry=r,
        )
        self.feedback_score = Histogram(
            "tuneloop_feedback_score",
            "Feedback scores 1-5 (thumbs up = 5, down = 1); mean = rate(_sum) / rate(_count)",
            LABELS,
            buckets=FEEDBACK_SCORE,
            registry=r,
        )
        self.rate_limit_store_errors = Counter(
            "tuneloop_rate_limit_store_errors",
            "Rate-limit store (Redis) failures, by what was done: rejected, allowed, tokens_lost, "
            "renew_failed (token reservations not renewed), lease_lost (one expired while its request ran)",
            ["action"],
            registry=r,
        )
        r.register(_ModelGauges(loads, ENGINE_GAUGES, gpu=True))
        if gates is not None:
            r.register(_ModelGauges(gates, GATE_GAUGES))
        if adapters is not None:
            r.register(_AdapterGauges(adapters))

    def render(self) -> bytes:
        return generate_latest(self.registry)
