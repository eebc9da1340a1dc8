"""The canary's sequential tests and rule: confidence sequences for two rates, an exact test of one rate
against a limit, p95 latency compared on distributions, and what `judge` does with them."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tuneloop.config import load_config
from tuneloop.errors import ConfigError
from tuneloop.loop import LoopConfig
from tuneloop.loop.canary import VariantStats, judge, window_stats
from tuneloop.loop.config import CanarySettings
from tuneloop.loop.stats import quantile_bounds, rate_above, rate_difference


def canary(**kw) -> CanarySettings:
    return CanarySettings(**{"production_model": "p", "candidate_model": "c", "window": "60s", **kw})


def rated(
    ratings: int, ups: int, requests: int | None = None, errors: int = 0, latencies=None
) -> VariantStats:
    lat = list(latencies) if latencies is not None else [0.2] * (requests or ratings)
    return VariantStats(requests or ratings, errors, lat, ratings, ups)


# ------------------------------------------------------------------ the statistics


def test_rate_difference_sequence_is_centred_shrinks_with_counts_and_never_collapses():
    small = rate_difference(7, 10, 60, 100, 0.95)
    large = rate_difference(700, 1000, 6000, 10000, 0.95)
    assert small.estimate == pytest.approx(0.1) and large.estimate == pytest.approx(0.1)
    assert small.low < 0 < 0.1 < small.high  # ten ratings prove nothing
    assert 0 < large.low < 0.1 < large.high and large.high - large.low < (small.high - small.low) / 5
    unanimous = rate_difference(3, 3, 0, 3, 0.95)  # all up vs all down after three ratings: not certainty
    assert unanimous.low < 0.5 and unanimous.high <= 1.0
    assert rate_difference(0, 0, 5, 10, 0.95).estimate is None
    # a time-uniform interval is wider than the fixed-sample one at the same counts (the price of looking)
    z = 1.96 * np.sqrt(0.7 * 0.3 / 1000 + 0.6 * 0.4 / 10000)
    assert large.high - large.low > 2 * z


def test_rate_above_a_limit_is_exact_and_one_sided():
    assert rate_above(3, 5, 0.05, 0.95)[0]  # 3 errors in 5 requests: above 5 %
    assert not rate_above(1, 100, 0.05, 0.95)[0]  # 1 % is not above 5 %
    assert not rate_above(6, 100, 0.05, 0.95)[0]  # 6 % of 100 is not shown above 5 %
    assert rate_above(120, 1000, 0.05, 0.95)[0]
    assert rate_above(1, 1000, 0.0, 0.95) == (True, float("inf"))  # a limit of 0: any error
    assert rate_above(0, 1000, 0.0, 0.95)[0] is False and rate_above(0, 0, 0.05, 0.95) == (False, 1.0)


def test_quantile_bounds_hold_the_true_p95_and_need_enough_values():
    rng = np.random.default_rng(0)
    true_p95 = -np.log(0.05)  # exponential(1)
    low, high = quantile_bounds(rng.exponential(1, 5000), 0.95, 0.95)
    assert low < true_p95 < high and high - low < 0.6
    assert quantile_bounds([], 0.95, 0.95) == (None, None)
    low, high = quantile_bounds(rng.exponential(1, 10), 0.95, 0.95)
    assert high is None  # ten requests cannot bound a p95 from above
    hits = sum(lo is not None and hi is not None and lo <= true_p95 <= hi
               for lo, hi in (quantile_bounds(rng.exponential(1, 400), 0.95, 0.9) for _ in range(200)))  # fmt: skip
    assert hits >= 190  # at least 90 % (a time-uniform sequence is conservative at one look)


# ------------------------------------------------------------------ the rule


def test_the_default_canary_never_promotes_without_ratings():
    s = canary(window="30m")
    assert s.min_feedback == 30 and s.confidence == 0.95 and s.rating_margin == 0.0
    v = judge(VariantStats(900, 0, [0.2] * 900), VariantStats(100, 0, [0.2] * 100), s, elapsed_s=3600)
    assert v.action == "wait" and "each variant needs 30" in v.reason
    v = judge(rated(900, 700), rated(29, 29), s, elapsed_s=3600)  # 29 of 29 up, one short of the minimum
    assert v.action == "wait"
    v = judge(VariantStats(900), VariantStats(100), s, elapsed_s=s.seconds("max_wait"))
    assert v.action == "rollback" and "canary.max_wait" in v.reason


def test_a_candidate_shown_better_is_promoted_after_the_window_with_its_numbers():
    prod, cand = rated(900, 540), rated(300, 240)  # 80 % vs 60 % thumbs-up
    early = judge(prod, cand, canary(), elapsed_s=30)
    assert early.action == "wait" and early.checks[0].status == "pass"  # shown, but the window is not over
    v = judge(prod, cand, canary(), elapsed_s=61)
    assert v.action == "promote" and "thumbs-up 80.0% of 300 vs 60.0% of 900" in v.reason
    numbers = json.loads(json.dumps(v.numbers()))
    thumbs = numbers["checks"][0]
    assert thumbs["name"] == "thumbs_up" and thumbs["n"] == [300, 900] and thumbs["low"] > 0
    assert {c["name"] for c in numbers["checks"]} == {
        "thumbs_up",
        "error_rate",
        "error_increase",
        "latency_p95",
    }
    # with a margin: better by more than 25 points is neither shown nor ruled out here
    assert judge(prod, cand, canary(rating_margin=0.25), elapsed_s=61).action == "wait"


def test_a_candidate_shown_worse_is_rolled_back_at_once():
    v = judge(rated(900, 630), rated(200, 80), canary(), elapsed_s=10)  # 40 % vs 70 %, before the window
    assert v.action == "rollback" and "shown below production's" in v.reason
    # a candidate as good as production is neither: it waits, and max_wait rolls it back
    same = judge(rated(900, 630), rated(200, 140), canary(), elapsed_s=100)
    assert same.action == "wait" and same.checks[0].status == "undecided"


def test_non_inferiority_margin_promotes_a_candidate_not_worse_by_more():
    v = judge(rated(9000, 6300), rated(1000, 700), canary(rating_margin=-0.05), elapsed_s=61)
    assert v.action == "promote" and "by more than -0.050" in v.reason


def test_errors_end_a_canary_early():
    broken = judge(VariantStats(50), VariantStats(20, errors=20), canary(), elapsed_s=5)
    assert (
        broken.action == "rollback"
        and "error rate 100.0% of 20 requests is shown above 5.0%" in broken.reason
    )
    # a few errors of a few requests are not evidence
    assert judge(VariantStats(500), rated(20, 15, errors=2), canary(), elapsed_s=5).action == "wait"
    # more errors than production, below the absolute limit
    v = judge(
        VariantStats(20000, 20, [0.2] * 100), VariantStats(2000, 60, [0.2] * 100), canary(), elapsed_s=5
    )
    assert v.action == "rollback" and "vs production 0.1%" in v.reason
    assert (
        judge(VariantStats(20000, 20), VariantStats(2000, 60), canary(max_error_increase=0.05), 5).action
        == "wait"
    )
    # max_error_rate 0: one error is enough
    assert (
        judge(VariantStats(50), rated(20, 15, errors=1), canary(max_error_rate=0.0), 5).action == "rollback"
    )


def test_latency_is_compared_on_distributions_not_one_p95_of_a_handful():
    rng = np.random.default_rng(1)
    prod_lat = list(rng.lognormal(np.log(0.2), 0.3, 2000))
    prod = VariantStats(2000, 0, prod_lat, 900, 540)
    few_slow = VariantStats(20, 0, [0.2] * 18 + [3.0, 3.0], 0, 0)  # its p95 is 3 s, from 2 requests
    assert few_slow.p95_latency_s == 3.0
    assert judge(prod, few_slow, canary(), elapsed_s=30).action == "wait"
    slow = VariantStats(200, 0, list(rng.lognormal(np.log(0.6), 0.3, 200)), 0, 0)  # 3x slower throughout
    v = judge(prod, slow, canary(), elapsed_s=30)
    assert v.action == "rollback" and "shown above 1.5x production's p95" in v.reason
    assert judge(prod, slow, canary(max_latency_ratio=5), elapsed_s=30).action == "wait"


def test_min_feedback_zero_promotes_on_health_alone_and_says_so():
    v = judge(VariantStats(100, 0, [0.2] * 100), VariantStats(30, 0, [0.2] * 30), canary(min_feedback=0), 61)
    assert v.action == "promote" and "ratings not required" in v.reason


def test_the_old_rating_tolerance_is_an_error_that_names_its_replacement():
    with pytest.raises(ConfigError, match=r"canary.rating_tolerance .* canary.rating_margin"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f"}, "canary": {"production_model": "p",
                                 "candidate_model": "c", "rating_tolerance": 0.1}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"canary\.confidence"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "f"}, "canary": {"production_model": "p",
                                 "candidate_model": "c", "confidence": 1}})  # fmt: skip


# ------------------------------------------------------------------ the numbers it reads


def test_window_stats_count_each_rated_answer_once_by_its_mean_rating(traffic):
    t0 = time.time() - 1
    a = traffic.answer("q1", "a1", variant="bot-cand", latency=0.3)
    b = traffic.answer("q2", "a2", variant="bot-cand", latency=0.5)
    c = traffic.answer("q3", "a3", variant="bot-prod")
    traffic.answer("q4", "a4", variant="bot-cand", status=500)
    for key in ("u1", "u2", "u3"):  # three raters of one answer are one rated answer
        traffic.rate(a, "up", key)
    traffic.rate(b, 5, "u1")
    traffic.rate(b, 1, "u2")  # mean 3: not a thumbs-up
    traffic.rate(c, "down", "u1")
    from tuneloop.interactions.requestlog import default_path

    stats = window_stats(default_path(), None, "bot", t0, ("bot-prod", "bot-cand"))
    cand, prod = stats["bot-cand"], stats["bot-prod"]
    assert (cand.requests, cand.errors, cand.ratings, cand.ups) == (3, 1, 2, 1)
    assert sorted(cand.latencies) == [0.3, 0.5] and cand.mean_rating == pytest.approx(4.0)
    assert (prod.ratings, prod.ups) == (1, 0)
    assert (
        window_stats(default_path(), None, "bot", t0, ("bot-prod", "bot-cand"), positive_min=3)[
            "bot-cand"
        ].ups
        == 2
    )
