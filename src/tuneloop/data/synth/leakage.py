"""Held-out questions must not leak into training: every generated question (and paraphrase) is
compared with the evaluation set's questions, on normalized text (exact) and on n-gram overlap
(word n-grams; single characters are the units of Chinese), through an inverted index so the cost
grows with the n-grams shared, not with the size of the evaluation set."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tuneloop.data.dedup import normalize
from tuneloop.data.ngrams import UNITS
from tuneloop.errors import TuneloopError

_QUESTION_FIELDS = ("question", "prompt", "instruction", "input", "query")


class EvalIndex:
    def __init__(self, questions: list[str], n: int, overlap: float):
        self.n, self.overlap = n, overlap
        self.questions = questions
        self.exact = {normalize(q) for q in questions}
        self.grams: dict[tuple[str, ...], set[int]] = defaultdict(set)
        for i, q in enumerate(questions):
            for g in self._grams(q):
                self.grams[g].add(i)

    def _grams(self, text: str) -> set[tuple[str, ...]]:
        units = UNITS.findall(normalize(text))
        if len(units) <= self.n:
            return {tuple(units)} if units else set()
        return {tuple(units[i : i + self.n]) for i in range(len(units) - self.n + 1)}

    def leak(self, question: str) -> str | None:
        """The evaluation question `question` copies or overlaps, or None."""
        if normalize(question) in self.exact:
            return next(q for q in self.questions if normalize(q) == normalize(question))
        grams = self._grams(question)
        if not grams:
            return None
        shared: dict[int, int] = defaultdict(int)
        for g in grams:
            for i in self.grams.get(g, ()):
                shared[i] += 1
        if not shared:
            return None
        best, count = max(shared.items(), key=lambda kv: kv[1])
        return self.questions[best] if count / len(grams) >= self.overlap else None


def load_eval_questions(paths: list[str]) -> list[str]:
    """The user questions of evaluation files (JSONL: OpenAI messages, or a question/prompt field);
    a folder means every .jsonl file under it."""
    out: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
        if not path.exists():
            raise TuneloopError(f"--eval '{raw}' does not exist", hint="pass the held-out JSONL file")
        if not files:
            raise TuneloopError(f"--eval '{raw}' is a folder without .jsonl files")
        for f in files:
            out += _questions(f)
    return out


def _questions(file: Path) -> list[str]:
    found: list[str] = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TuneloopError(f"--eval '{file}' cannot be read: {e}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise TuneloopError(f"{file}:{number}: not JSON ({e})", hint="--eval takes JSONL") from None
        found += _row_questions(row)
    return found


def _row_questions(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return []
    msgs = row.get("messages") or row.get("prompt")
    if isinstance(msgs, list):
        return [
            m["content"]
            for m in msgs
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
        ]
    return [row[k] for k in _QUESTION_FIELDS if isinstance(row.get(k), str)][:1]
