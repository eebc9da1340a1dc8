"""Reading a verdict out of a judge's free text: the forms judges write, and what must stay unreadable."""

from __future__ import annotations

import pytest

from tuneloop.evaluation.judge_prompts import (
    FACT_LABELS,
    PAIR_LABELS,
    fact_messages,
    pair_messages,
    parse_label,
    prefilled,
    retry_messages,
)


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("B is right about the port.\nVerdict: B", "B"),
        ("Verdict: A", "A"),
        ("Verdict:A", "A"),  # a begun reply: "Verdict:" + the model's "A"
        ("The answer is: Verdict: A", "A"),
        ("**Verdict:** **B**", "B"),
        ("Verdict: tie.", "tie"),
        ("verdict = Tie", "tie"),
        ("Verdict：tie", "tie"),  # full-width colon
        ("Verdict: Answer B (it states the right port)", "B"),
        ("Verdict: A\nOn reflection...\nVerdict: B", "B"),  # the last verdict line decides
        ('{"reason": "same facts", "verdict": "tie"}', "tie"),
        ("Both are fine. [[B]]", "B"),
        ("A", "A"),
        ("Tie.", "tie"),
    ],
)
def test_verdict_forms_judges_write_are_read(reply, label):
    assert parse_label(reply, PAIR_LABELS) == label


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "The answer is better by 2 sentences.",
        "Verdict: A, Verdict: B or Verdict: tie",  # the instructions echoed
        '"Verdict: A", "Verdict: B" or "Verdict: tie".',
        "Verdict: A and B are equally good",  # "A" followed by more words is no verdict
        "Verdict: C",
        "Verdict:",
        "Verdict: A\nVerdict: maybe",  # the last verdict line is unreadable: no falling back to an earlier one
        "I think A is better.\nB is fine too.",
    ],
)
def test_unreadable_replies_are_none_never_a_guess(reply):
    assert parse_label(reply, PAIR_LABELS) is None


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("It says port 23.\nVerdict: contradicts", "contradicts"),
        ("Verdict: agrees", "agrees"),
        ("Verdict: not addressed", "not_addressed"),
        ("Verdict:not_addressed\n\nThe answer talks about", "not_addressed"),
        ("Verdict: Contradicts.", "contradicts"),
    ],
)
def test_fact_verdicts_are_read(reply, label):
    assert parse_label(reply, FACT_LABELS) == label


def test_pair_prompt_shows_first_as_a_and_carries_rubric_reference_and_facts():
    [m] = pair_messages("RUBRIC-X", "Q?", "first answer", "second answer", "REF", "- FACT", reasons=True)
    text = m["content"]
    assert m["role"] == "user"
    assert text.index("[Answer A]\nfirst answer") < text.index("[Answer B]\nsecond answer")
    assert "RUBRIC-X" in text and "REF" in text and "- FACT" in text and "reasons" in text
    [bare] = pair_messages("R", "Q?", "x", "", None, None, reasons=False)
    assert "[Reference answer" not in bare["content"] and "[Known facts]" not in bare["content"]
    assert "(empty)" in bare["content"] and "Reply with one line only" in bare["content"]


def test_retry_prompts_never_repeat_the_first():
    first = fact_messages("Q?", "ans", "facts")
    assert prefilled(first)[-1] == {"role": "assistant", "content": "Verdict:"}
    assert prefilled(first, "It agrees.")[-1]["content"] == "It agrees.\nVerdict:"
    again = retry_messages(first, "rambling", '"Verdict: agrees"')
    assert again[:-2] == first and again[-2] == {"role": "assistant", "content": "rambling"}
    assert again[-1]["role"] == "user" and "verdict line" in again[-1]["content"]
