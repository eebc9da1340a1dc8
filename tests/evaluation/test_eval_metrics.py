"""Answer metrics on pairs whose scores were worked out by hand, in English and Chinese."""

from __future__ import annotations

import pytest

from tuneloop.evaluation import metrics
from tuneloop.evaluation.metrics import mean_scores, score_tool_calls


def test_tokenize_splits_cjk_characters_and_keeps_latin_words_whole():
    text = "北京是首都。Hello, WORLD 64 devices！ＡＢＣ"
    assert metrics.tokenize(text) == ["北", "京", "是", "首", "都", "hello", "world", "64", "devices", "abc"]


def test_exact_match_ignores_case_width_punctuation_and_spacing():
    assert metrics.exact_match("  Paris. ", "paris") == 1.0
    assert metrics.exact_match("北京。", "北 京") == 1.0
    assert metrics.exact_match("ＰＡＲＩＳ!", "paris") == 1.0  # NFKC folds full-width letters
    assert metrics.exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_of_known_english_pair():
    # pred: the cat sat (3), ref: the cat is here (4), common: the, cat -> P=2/3, R=2/4, F1=4/7
    assert metrics.token_f1("The cat sat.", "the cat is here") == pytest.approx(4 / 7)


def test_token_f1_of_known_chinese_pair():
    # pred 北京是首都 (5 chars), ref 首都北京 (4): common 4 -> P=4/5, R=1, F1=8/9
    assert metrics.token_f1("北京是首都", "首都北京") == pytest.approx(8 / 9)


def test_rouge_l_of_known_english_pair():
    # pred 6 tokens, ref 5 tokens, LCS = the cat on the mat = 5 -> P=5/6, R=1, F=10/11
    assert metrics.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_is_order_sensitive_where_f1_is_not():
    # 北京是首都 vs 首都北京: LCS is 北京 or 首都 = 2 -> P=2/5, R=2/4, F = 2*0.4*0.5/0.9 = 4/9
    assert metrics.rouge_l("北京是首都", "首都北京") == pytest.approx(4 / 9)
    assert metrics.token_f1("北京是首都", "首都北京") > metrics.rouge_l("北京是首都", "首都北京")


def test_lcs_length_of_known_sequences():
    assert metrics.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_empty_texts_agree_and_empty_vs_text_disagree():
    assert metrics.token_f1("", "...") == 1.0
    assert metrics.rouge_l("", "Paris") == 0.0
    assert metrics.token_f1("Paris", "") == 0.0


def test_contains_answer_needs_contiguous_tokens():
    assert metrics.contains_answer("The cluster has 64 devices in total.", "64 Devices") == 1.0
    assert metrics.contains_answer("64 GPUs and 8 devices", "64 devices") == 0.0
    assert metrics.contains_answer("中国的首都是北京。", "北京") == 1.0
    assert metrics.contains_answer("北方的京城", "北京") == 0.0


def test_mean_scores_averages_contains_answer_over_rows_that_have_it():
    rows = [metrics.score("Paris", "Paris", "Paris"), metrics.score("Rome", "Paris")]
    means = metrics.mean_scores(rows)
    assert means["exact_match"] == 0.5
    assert means["contains_answer"] == 1.0  # only the first row carries an answer


def test_thousands_separators_do_not_split_numbers():
    assert metrics.tokenize("1,000 devices") == ["1000", "devices"]
    assert metrics.contains_answer("It supports 1,000 clients.", "1000 clients") == 1.0
    assert metrics.tokenize("2,5") == ["2", "5"]  # not a thousands group: the comma is punctuation


# ---------------------------------------------------------------------------------- tool calls

TOOLS = ["get_weather", "create_ticket"]


def _tc(name: str, arguments: str) -> dict:
    return {"id": "call_x", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tool_call_that_matches_scores_one_on_everything_regardless_of_key_order_and_spacing():
    ref = [_tc("get_weather", '{"city": "Paris", "unit": "celsius"}')]
    got = [_tc("get_weather", '{"unit":"celsius","city":"Paris"}')]
    assert score_tool_calls(got, ref, TOOLS) == {
        "valid_call": 1.0,
        "correct_function": 1.0,
        "arguments_match": 1.0,
    }


def test_right_function_wrong_arguments():
    ref = [_tc("get_weather", '{"city": "Paris"}')]
    scores = score_tool_calls([_tc("get_weather", '{"city": "Lyon"}')], ref, TOOLS)
    assert scores == {"valid_call": 1.0, "correct_function": 1.0, "arguments_match": 0.0}


def test_numbers_compare_as_json_values():
    ref = [_tc("create_ticket", '{"priority": 2}')]
    assert score_tool_calls([_tc("create_ticket", '{"priority": 2.0}')], ref, TOOLS)["arguments_match"] == 1.0
    assert score_tool_calls([_tc("create_ticket", '{"priority": "2"}')], ref, TOOLS)["arguments_match"] == 0.0


def test_unparsable_arguments_or_unknown_function_is_not_a_valid_call():
    ref = [_tc("get_weather", '{"city": "Paris"}')]
    broken = score_tool_calls([_tc("get_weather", '{"city": "Paris"')], ref, TOOLS)
    assert broken == {"valid_call": 0.0, "correct_function": 1.0, "arguments_match": 0.0}
    unknown = score_tool_calls([_tc("get_time", '{"city": "Paris"}')], ref, TOOLS)
    assert unknown["valid_call"] == 0.0 and unknown["correct_function"] == 0.0


def test_no_call_when_one_was_expected_scores_zero():
    ref = [_tc("get_weather", '{"city": "Paris"}')]
    assert score_tool_calls([], ref, TOOLS) == {
        "valid_call": 0.0,
        "correct_function": 0.0,
        "arguments_match": 0.0,
    }


def test_parallel_calls_match_in_any_order_but_not_a_subset():
    ref = [_tc("get_weather", '{"city": "Paris"}'), _tc("get_weather", '{"city": "Rome"}')]
    swapped = list(reversed(ref))
    assert score_tool_calls(swapped, ref, TOOLS)["arguments_match"] == 1.0
    assert score_tool_calls(ref[:1], ref, TOOLS)["correct_function"] == 0.0


def test_reference_without_calls_scores_whether_the_reply_abstained():
    assert score_tool_calls([], [], TOOLS) == {"no_call_correct": 1.0}
    assert score_tool_calls([_tc("get_weather", "{}")], [], TOOLS) == {"no_call_correct": 0.0}


def test_mean_scores_average_tool_metrics_over_the_rows_that_have_them():
    rows = [{"valid_call": 1.0, "correct_function": 1.0, "arguments_match": 0.0}, {"no_call_correct": 0.0}]
    means = mean_scores(rows)
    assert means == {
        "valid_call": 1.0,
        "correct_function": 1.0,
        "arguments_match": 0.0,
        "no_call_correct": 0.0,
    }
