"""The metric-name scanner the coverage test relies on."""

from __future__ import annotations

from .promql import metric_names


def test_names_functions_clauses_and_matchers():
    expr = (
        "histogram_quantile(0.99, sum by (model_name, variant, le) "
        '(rate(vllm:e2e_request_latency_seconds_bucket{model_name=~"$model", variant=~"$variant"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket"}


def test_binary_operators_recorded_names_and_templates():
    expr = """
      (tuneloop:variant_error_ratio:rate10m > on (model_name) group_left ()
        (tuneloop:variant_error_ratio:rate10m and on (model_name, variant)
          topk by (model_name) (1, tuneloop:variant_requests:rate10m)) + 0.01)
      and on (model_name, variant) (tuneloop:variant_requests:rate10m > 0.02)
      or sum by (<<.GroupBy>>) (vllm:num_requests_waiting{<<.LabelMatchers>>}) * 0
      unless label_values(tuneloop_requests_total, model_name)
    """
    assert metric_names(expr) == {
        "tuneloop:variant_error_ratio:rate10m",
        "tuneloop:variant_requests:rate10m",
        "vllm:num_requests_waiting",
        "tuneloop_requests_total",
    }
    assert metric_names('label_values(tuneloop_requests_total{model_name=~"$model"}, variant)') == {
        "tuneloop_requests_total"
    }
