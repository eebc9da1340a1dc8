"""A real Prometheus scraping a real `tuneloop serve`: PromQL answers match the traffic that was sent,
tuneloop's rules evaluate on the live series, and every dashboard query runs."""

from __future__ import annotations

import json
import math
import time

import httpx

from .conftest import DASHBOARD, RunningPrometheus, Traffic


def _eventually(prometheus: RunningPrometheus, expected: dict[str, float], timeout: float = 60) -> None:
    """Poll until each scalar-valued query (a one-element vector) equals its expected value."""
    deadline = time.monotonic() + timeout
    while True:
        got = {q: [v for _, v in prometheus.vector(q)] for q in expected}
        if all(got[q] == [float(v)] for q, v in expected.items()):
            return
        assert time.monotonic() < deadline, f"expected {expected}, Prometheus says {got}"
        time.sleep(0.5)


def test_promql_answers_latency_and_request_counts(prometheus: RunningPrometheus, traffic: Traffic):
    assert traffic.ok == 2 * (4 + 1 + 8)
    _eventually(
        prometheus,
        {
            "sum(vllm:e2e_request_latency_seconds_count)": traffic.ok,
            'sum(tuneloop_requests_total{status="200"})': traffic.ok,
            "sum(tuneloop_requests_total)": traffic.ok,
            "sum(vllm:request_success_total)": traffic.ok,
            "sum(vllm:prompt_tokens_total)": traffic.prompt_tokens,
            "sum(vllm:generation_tokens_total)": traffic.completion_tokens,
            'sum(tuneloop_rejected_requests_total{reason="invalid_api_key"})': traffic.unauthorized,
            'sum(tuneloop_requests_total{model_name="tiny", variant="default"})': 2 * 5,
        },
    )
    # per A/B variant: what Prometheus counts is what the X-Tuneloop-Variant headers said
    by_variant = {
        m["variant"]: v
        for m, v in prometheus.vector('sum by (variant) (tuneloop_requests_total{model_name="ab"})')
    }
    assert by_variant == {k: float(v) for k, v in traffic.by_variant.items()}
    # feedback: counted and scored per variant of the answer it rates
    scores = {m["variant"]: v for m, v in prometheus.vector(
        'sum by (variant) (tuneloop_feedback_score_sum{model_name="ab"})')}  # fmt: skip
    assert scores == {k: float(sum(v)) for k, v in traffic.feedback.items()}
    counted = {m["variant"]: v for m, v in prometheus.vector(
        'sum by (variant) (tuneloop_feedback_total{model_name="ab"})')}  # fmt: skip
    assert counted == {k: float(len(v)) for k, v in traffic.feedback.items()}
    # latency: a real histogram with real observations
    [(_, p50)] = prometheus.vector(
        "histogram_quantile(0.5, sum by (le) (vllm:e2e_request_latency_seconds_bucket))"
    )
    [(_, p99)] = prometheus.vector(
        "histogram_quantile(0.99, sum by (le) (vllm:e2e_request_latency_seconds_bucket))"
    )
    assert 0 < p50 <= p99 < 60
    [(_, total_s)] = prometheus.vector("sum(vllm:e2e_request_latency_seconds_sum)")
    assert 0 < total_s < 60 * traffic.ok
    [(_, ttft_n)] = prometheus.vector("sum(vllm:time_to_first_token_seconds_count)")
    assert 0 < ttft_n <= traffic.ok
    # rates over the two rounds, per variant, as the dashboard and the alerts read them
    rates = prometheus.vector("sum by (model_name, variant) (rate(tuneloop_requests_total[1m]))")
    assert {(m["model_name"], m["variant"]) for m, _ in rates} == {("tiny", "default")} | {
        ("ab", v) for v in traffic.by_variant
    }
    assert all(v > 0 for _, v in rates)


def test_rules_evaluate_on_live_series(prometheus: RunningPrometheus, traffic: Traffic):
    deadline = time.monotonic() + 60
    while True:
        groups = httpx.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        recorded = prometheus.vector('tuneloop:variant_error_ratio:rate10m{model_name="ab"}')
        if len(recorded) == len(traffic.by_variant) and all(r["health"] == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, (
            recorded,
            [(r["name"], r["health"], r.get("lastError")) for r in rules],
        )
        time.sleep(0.5)
    assert len(rules) == 14 and {g["name"] for g in groups} == {"tuneloop.recording", "tuneloop.alerts"}
    # healthy traffic: every variant's error ratio is 0 (not NaN: a variant without 5xx counts as 0)
    assert {m["variant"]: v for m, v in recorded} == {v: 0.0 for v in traffic.by_variant}
    requests = prometheus.vector('tuneloop:variant_requests:rate10m{model_name="ab"}')
    assert len(requests) == len(traffic.by_variant) and all(v > 0 for _, v in requests)
    firing = prometheus.vector('ALERTS{alertstate="firing"}')
    assert firing == [], firing


def _dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace('"$model"', '".*"')
                .replace('"$variant"', '".*"')
            )
            out.append((panel["title"], expr))
    return out


def test_every_dashboard_query_runs_and_has_data(prometheus: RunningPrometheus, traffic: Traffic):
    queries = _dashboard_queries()
    assert len(queries) >= 15
    empty = []
    for title, expr in queries:
        assert "$" not in expr, f"{title}: an unknown Grafana variable in {expr}"
        result = prometheus.vector(expr)  # fails on a PromQL error (parse or evaluation)
        # error ratios have no series while nothing failed (no 4xx/5xx generation requests were sent)
        if not result and 'status=~"' not in expr:
            empty.append((title, expr))
        for _, v in result:
            assert not math.isinf(v), (title, expr, result)
    assert not empty, f"dashboard queries without data after real traffic: {empty}"
