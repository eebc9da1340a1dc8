"""Every metric the dashboard, the alert rules and the autoscaling adapter reference is one the server
really exports (scraped from a running `tuneloop serve` after real traffic, so histograms exist)."""

from __future__ import annotations

import json

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DASHBOARD, DEPLOY, RULES, RunningServer, Traffic
from .promql import metric_names

ADAPTER = DEPLOY / "helm" / "prometheus-adapter-values.yaml"


def _rules() -> tuple[set[str], set[str]]:
    """(names referenced by rule expressions, names the rules record)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    return used, {r["record"] for r in rules if "record" in r}


def _dashboard() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return set().union(*(metric_names(e) for e in exprs))


def _adapter() -> set[str]:
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    return set().union(*(metric_names(r["seriesQuery"]) | metric_names(r["metricsQuery"]) for r in rules))


def test_referenced_metrics_are_exported(running_server: RunningServer, traffic: Traffic):
    text = httpx.get(running_server.url + "/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    rules_used, recorded = _rules()
    referenced = {
        "dashboard": _dashboard(),
        "rules": rules_used - recorded,
        "prometheus-adapter": _adapter(),
    }
    for where, names in referenced.items():
        missing = sorted(names - exported)
        assert not missing, f"{where} references metrics the server does not export: {missing}"
    everything = set().union(*referenced.values())
    # the scanner found what we know is there (guards against it silently finding nothing)
    assert {
        "tuneloop_requests_total",
        "tuneloop_rejected_requests_total",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:gpu_cache_usage_perc",
        "vllm:request_queue_time_seconds_bucket",
        "tuneloop_feedback_score_sum",
        "tuneloop_feedback_score_count",
        "tuneloop_feedback_total",
        "tuneloop_gateway_requests_running",
        "tuneloop_gateway_requests_waiting",
        "tuneloop_gateway_max_concurrency",
        "tuneloop_gateway_max_queue",
    } <= everything
    # recorded names used by alerts are defined by the recording rules themselves
    assert recorded == {n for n in rules_used if n.startswith("tuneloop:")}
