"""Answer-quality metrics: on text pairs exact match, token F1, ROUGE-L and answer containment; on tool
calls (`score_tool_calls`) valid calls, the right function and the right arguments.

Tokenization is Chinese-aware: after NFKC and lowercasing, each CJK character (and kana) is one
token, runs of letters/digits are one token, punctuation and whitespace are dropped. So "北京" is
two tokens and "64 devices." is ["64", "devices"], and the metrics mean the same in both scripts.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

# CJK ideographs (basic, extension A, compatibility, extensions B+) and Japanese kana: no spaces
# between words in these scripts, so a character is the only segmentation we can do exactly.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")

# "1,000" and "1000" are the same number; a comma before anything but three digits is punctuation.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "contains_answer")
# Rows whose reference calls tools score the first three; rows whose reference answers without a
# call (the model should not call) score the last.
TOOL_METRICS = ("valid_call", "correct_function", "arguments_match", "no_call_correct")
METRIC_NAMES = TEXT_METRICS + TOOL_METRICS


def normalize(text: str) -> str:
    return _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).lower())


def tokenize(text: str) -> list[str]:
    """Tokens for scoring: CJK characters one by one, Latin words and numbers whole."""
    return _TOKEN.findall(normalize(text))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both have the same tokens in order (case, width, punctuation, spacing ignored)."""
    return float(tokenize(prediction) == tokenize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1; two empty texts agree perfectly."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1, as rouge-score reports `fmeasure`) on scoring tokens."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, answer: str) -> float:
    """1.0 when the answer's tokens occur contiguously in the prediction ("64 devices", "北京")."""
    pred, ans = tokenize(prediction), tokenize(answer)
    if not ans:
        return 1.0
    n = len(ans)
    return float(any(pred[i : i + n] == ans for i in range(len(pred) - n + 1)))


def score(prediction: str, reference: str, answer: str | None = None) -> dict[str, float]:
    """All metrics for one sample; `contains_answer` only when the row carries an answer."""
    scores = {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }
    if answer is not None:
        scores["contains_answer"] = contains_answer(prediction, answer)
    return scores


def mean_scores(per_sample: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the samples that have it (contains_answer may be on some rows only)."""
    sums: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for scores in per_sample:
        for name, value in scores.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] += 1
    return {name: sums[name] / counts[name] for name in METRIC_NAMES if counts[name]}


def score_tool_calls(
    predicted: list[dict[str, Any]], reference: list[dict[str, Any]], tools: Iterable[str]
) -> dict[str, float]:
    """Tool-call accuracy of one reply; calls are OpenAI `tool_calls` (function name, arguments string).

    - valid_call: the reply made at least one call, and every call names one of `tools` with
      arguments that parse to a JSON object (what an application can execute);
    - correct_function: the called functions are the reference's (as a multiset: parallel calls
      may come in any order);
    - arguments_match: the calls equal the reference's, arguments compared as JSON (key order and
      spacing do not matter, values do);
    - no_call_correct (reference without calls): the reply made none.
    """
    if not reference:
        return {"no_call_correct": float(not predicted)}
    names = set(tools)
    calls = [_call(c) for c in predicted]
    valid = bool(calls) and all(name in names and isinstance(args, dict) for name, args in calls)
    expected = [_call(c) for c in reference]
    return {
        "valid_call": float(valid),
        "correct_function": float(sorted(n for n, _ in calls) == sorted(n for n, _ in expected)),
        "arguments_match": float(valid and _same_calls(calls, expected)),
    }


def _call(call: dict[str, Any]) -> tuple[str, Any]:
    """(name, parsed arguments; None when they are not a JSON object) of an OpenAI tool call."""
    fn = call.get("function") or {}
    try:
        args = json.loads(fn.get("arguments") or "")
    except (TypeError, ValueError):
        args = None
    return str(fn.get("name")), args if isinstance(args, dict) else None


def _same_calls(calls: list[tuple[str, Any]], expected: list[tuple[str, Any]]) -> bool:
    """The same calls in any order; arguments equal as parsed JSON (20 and 20.0 are one number)."""
    left = list(calls)
    for call in expected:
        if call not in left:
            return False
        left.remove(call)
    return not left
