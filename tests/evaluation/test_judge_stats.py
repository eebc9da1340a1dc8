"""The numbers made of judgments: win rate and its interval, paired values, position bias, agreement."""

from __future__ import annotations

import math

import pytest

from tuneloop.evaluation.judge import Judgment, combine, order_verdict
from tuneloop.evaluation.judge_stats import (
    agreement,
    binomial_two_sided,
    paired_values,
    position_bias,
    wilson,
    win_rate,
)


def _judgment(said_a_first: str | None, said_b_first: str | None) -> Judgment:
    """What `Judge.compare` builds from two single-order verdicts ("A", "B", "tie", None: unreadable)."""
    return combine(None, order_verdict("a", said_a_first), order_verdict("b", said_b_first))


def test_orders_that_agree_decide_and_disagreeing_orders_tie():
    assert _judgment("A", "B").winner == "a"  # a shown first won, and a shown second won
    assert _judgment("B", "A").winner == "b"
    assert _judgment("A", "A").winner == "tie"  # "always the first one": no preference for a or b
    assert _judgment("A", "tie").winner == "tie"
    assert _judgment(None, "B").winner == "tie" and _judgment(None, "B").invalid
    assert paired_values([_judgment("A", "B"), _judgment("B", "A"), _judgment("A", "A")]) == [1, -1, 0]


def test_wilson_matches_the_textbook_interval():
    # 7 of 10 at 95 %: (0.3968, 0.8922) as statsmodels' proportion_confint(method="wilson") gives
    low, high = wilson(7, 10, 0.95)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
    assert wilson(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and wilson(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_win_rate_counts_ties_half_and_does_not_collapse_when_all_tie():
    js = [_judgment("A", "B")] * 6 + [_judgment("A", "A")] * 2 + [_judgment("B", "A")] * 2
    rate, low, high, n = win_rate(js)
    assert (rate, n) == (0.7, 10) and low < 0.7 < high
    rate, low, high, n = win_rate([_judgment("A", "A")] * 20)
    assert rate == 0.5 and low < 0.3 and high > 0.7  # 20 ties say nothing: a wide interval, not [0.5, 0.5]
    assert win_rate(js, confidence=0.99).ci_low < win_rate(js, confidence=0.9).ci_low


def test_binomial_p_value_is_exact():
    assert binomial_two_sided(5, 10) == 1.0
    assert binomial_two_sided(10, 10) == pytest.approx(2 / 1024)
    assert binomial_two_sided(0, 10) == pytest.approx(2 / 1024)
    assert binomial_two_sided(8, 10) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert binomial_two_sided(0, 0) == 1.0


def test_a_judge_that_always_says_a_is_flagged_position_biased():
    bias = position_bias([_judgment("A", "A")] * 5)
    assert (bias.decided, bias.first_won, bias.first_rate) == (10, 10, 1.0)
    assert bias.biased and bias.p_value < 0.01 and bias.consistent == 0.0


def test_a_fair_judge_is_not_flagged():
    js = [_judgment("A", "B")] * 3 + [_judgment("B", "A")] * 3
    bias = position_bias(js)
    assert bias.first_rate == 0.5 and not bias.biased and bias.consistent == 1.0
    unreadable = position_bias([_judgment(None, None)] * 3)
    assert unreadable.decided == 0 and unreadable.first_rate is None and not unreadable.biased
    assert unreadable.invalid == 6


def test_agreement_counts_only_items_the_metric_tells_apart():
    js = [_judgment("A", "B"), _judgment("B", "A"), _judgment("A", "A"), _judgment("A", "B")]
    a = [1.0, 1.0, 0.0, 0.5]
    b = [0.0, 0.0, 1.0, 0.5]  # the last item: the metric ties, so it does not count
    got = agreement(js, a, b, "contains_answer")
    assert (got.differ, got.agree, got.disagree, got.judge_tie) == (3, 1, 1, 1)
    assert got.rate == pytest.approx(1 / 3) and got.rate_decided == 0.5
    none = agreement(js[3:], a[3:], b[3:], "token_f1")
    assert none.differ == 0 and none.rate is None
    with pytest.raises(ValueError):
        agreement(js, a[:2], b, "x")
    assert not math.isnan(got.rate)
