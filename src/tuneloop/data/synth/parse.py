"""The teacher's reply -> question-answer items, tolerant of what chat models wrap JSON in (code
fences, a sentence before it, a bare list instead of {"items": [...]}), strict about what an item
must hold (a non-empty question and answer)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str
    paraphrases: list[str] = field(default_factory=list)


class MalformedReply(ValueError):
    """The reply holds no usable item; the message says what it held instead."""


def parse_reply(text: str, kinds: list[str]) -> tuple[list[QA], int]:
    """(the usable items, how many items were unusable). `kinds` are the asked kinds in order: an item
    without a known kind gets the one asked at its position."""
    data = _first_json(text)
    items = data.get("items") if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None and "question" in data:
        items = [data]  # one item without the wrapper
    if not isinstance(items, list):
        raise MalformedReply(f"JSON without an 'items' list: {_short(text)}")
    good: list[QA] = []
    for i, item in enumerate(items):
        qa = _item(item, kinds[i % len(kinds)] if kinds else "fact", kinds)
        if qa is not None:
            good.append(qa)
    if not good:
        raise MalformedReply(f"no item with a question and an answer: {_short(text)}")
    return good, len(items) - len(good)


def _first_json(text: str) -> Any:
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", body):
        try:
            return decoder.raw_decode(body, m.start())[0]
        except ValueError:
            continue
    raise MalformedReply(f"no JSON in the reply: {_short(text)}")


def _item(item: Any, default_kind: str, kinds: list[str]) -> QA | None:
    if not isinstance(item, dict):
        return None
    q, a = item.get("question"), item.get("answer")
    if not (isinstance(q, str) and _wordy(q) and isinstance(a, str | int | float) and _wordy(str(a), 1)):
        return None
    kind = item.get("kind") if item.get("kind") in kinds else default_kind
    raw = item.get("paraphrases") or []
    paraphrases = (
        [p.strip() for p in raw if isinstance(p, str) and _wordy(p)] if isinstance(raw, list) else []
    )
    return QA(kind, q.strip(), str(a).strip(), paraphrases)


def _wordy(text: str, least: int = 3) -> bool:
    """At least `least` letters or digits: a placeholder ("...", "?") copied from the prompt is no question."""
    return sum(c.isalnum() for c in text) >= least


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return repr(text[:n] + ("..." if len(text) > n else ""))
