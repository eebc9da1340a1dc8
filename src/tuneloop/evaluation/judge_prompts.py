"""What the judge is asked, and reading its verdict back out of free text.

The judge writes a short reason and then a final line `Verdict: X`; `parse_label` reads the last
such line (also JSON `{"verdict": "X"}`, MT-Bench's `[[X]]`, or a reply that is only the label).
Anything else, an echo of the instructions ("Verdict: A, Verdict: B or ...") included, is invalid:
the caller asks once more with `retry_messages` and then gives up with a flag, never a guess.
Everything goes in one user turn: some chat templates refuse a system role.
"""

from __future__ import annotations

import json
import re

Messages = list[dict[str, str]]

# Bumped whenever the wording below changes: it is part of the cache key, so a new prompt is never
# answered from judgments made with the old one.
PROMPT_VERSION = "1"

PAIR_LABELS = {
    "a": "A",
    "b": "B",
    "tie": "tie",
    "answer a": "A",
    "answer b": "B",
    "equal": "tie",
    "draw": "tie",
}
PAIR_CHOICES = '"Verdict: A", "Verdict: B" or "Verdict: tie"'

FACT_LABELS = {
    "agrees": "agrees",
    "agree": "agrees",
    "consistent": "agrees",
    "contradicts": "contradicts",
    "contradict": "contradicts",
    "contradiction": "contradicts",
    "not_addressed": "not_addressed",
    "not addressed": "not_addressed",
    "unrelated": "not_addressed",
}
FACT_CHOICES = '"Verdict: agrees", "Verdict: contradicts" or "Verdict: not_addressed"'


def _section(title: str, text: str | None) -> list[str]:
    return [] if text is None or not text.strip() else [f"[{title}]", text.strip(), ""]


def _ending(reasons: bool, choices: str) -> str:
    if reasons:
        return f"Give at most two short sentences of reasons, then end with one line of exactly this form: {choices}."
    return f"Reply with one line only: {choices}."


def pair_messages(
    rubric: str,
    question: str,
    first: str,
    second: str,
    reference: str | None,
    facts: str | None,
    reasons: bool = True,
) -> Messages:
    """Answer `first` shown as A, `second` as B."""
    lines = [
        "You are an impartial judge. Compare two answers to a user's question.",
        "",
        "Rubric:",
        rubric.strip(),
        "",
        *_section("Question", question),
        *_section("Reference answer (correct)", reference),
        *_section("Known facts", facts),
        "[Answer A]",
        first.strip() or "(empty)",
        "",
        "[Answer B]",
        second.strip() or "(empty)",
        "",
        f"Which answer is better by the rubric? {_ending(reasons, PAIR_CHOICES)}",
    ]
    return [{"role": "user", "content": "\n".join(lines)}]


def fact_messages(question: str, answer: str, facts: str, reasons: bool = True) -> Messages:
    lines = [
        "You check an answer against known facts.",
        "",
        *_section("Known facts", facts),
        *_section("Question", question),
        "[Answer]",
        answer.strip() or "(empty)",
        "",
        "Does the answer agree with the known facts, contradict them (states something they rule out), "
        f"or not address them? {_ending(reasons, FACT_CHOICES)}",
    ]
    return [{"role": "user", "content": "\n".join(lines)}]


VERDICT_PREFIX = "Verdict:"


def prefilled(messages: Messages, reply: str = "") -> Messages:
    """The conversation with the judge's reply begun for it (its reasons, if any) and ending in
    "Verdict:", for a backend that continues a final assistant turn (our engine): even a small model
    then says one of the labels, or visibly not."""
    begun = f"{reply.strip()}\n{VERDICT_PREFIX}" if reply.strip() else VERDICT_PREFIX
    return [*messages, {"role": "assistant", "content": begun}]


def retry_messages(messages: Messages, reply: str, choices: str) -> Messages:
    """For a backend that cannot continue a turn (an upstream): the same conversation, the unreadable
    reply, and a request for the verdict line alone."""
    ask = f"Your reply did not end with a verdict line. Reply with one line only: {choices}."
    return [
        *messages,
        {"role": "assistant", "content": reply.strip() or "(empty)"},
        {"role": "user", "content": ask},
    ]


# "Verdict: **A**", "verdict = tie.", "Verdict: Answer B (it is correct)", '"verdict": "B"'
_VERDICT = re.compile(r"verdict\W{0,3}?\s*[:：=]\s*", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[\s*([^\[\]]{1,20}?)\s*\]\]")
_JSON = re.compile(r"\{[^{}]*\}")
_MARKUP = " \t*_`\"'[]()<>{}"


def _label(text: str, labels: dict[str, str], whole: bool) -> str | None:
    """The label `text` starts with (`whole`: consists of), after markup and punctuation."""
    t = " ".join(text.strip(_MARKUP).lower().replace("-", " ").split())
    if whole:
        t = t.rstrip(".!").strip(_MARKUP)
        return labels.get(t) or labels.get(t.replace(" ", "_"))
    for spelling in sorted(labels, key=len, reverse=True):  # "answer a" before "a"
        for form in {spelling, spelling.replace("_", " ")}:
            # the label, then the end or punctuation: "A." "A (reason)" but not "A and B are equal"
            if re.match(rf"{re.escape(form)}\s*[*`\"'\]}}]*\s*(?:$|[.,;:!(—–-])", t):
                return labels[spelling]
    return None


def parse_label(text: str, labels: dict[str, str]) -> str | None:
    """The verdict in a judge's reply, or None when there is no unambiguous one."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        tails = _VERDICT.split(line)[1:]  # the text after each "verdict:" of the line
        if tails:  # the last verdict line decides; two different verdicts on it are an echo
            found = {_label(t, labels, whole=False) for t in tails}
            return found.pop() if len(found) == 1 else None
    for blob in reversed(_JSON.findall(text)):
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if isinstance(data, dict):
            value = next((data[k] for k in ("verdict", "winner", "label") if k in data), None)
            if isinstance(value, str):
                return _label(value, labels, whole=True)
    brackets = _BRACKETS.findall(text)
    if brackets:
        return _label(brackets[-1], labels, whole=True)
    return _label(lines[-1], labels, whole=True) if len(lines) == 1 else None
