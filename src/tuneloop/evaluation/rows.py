"""Reading an evaluation set: a JSONL file (or a prepared dataset folder's val.jsonl) into rows.

Every row keeps its file and line, so any later complaint ("no assistant turn to score") can say
exactly where the problem is. Rows are SFT (`messages`) or text (`text`); one file holds one kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.errors import TuneloopError

Kind = Literal["sft", "text"]
ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Row:
    file: str
    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # id, answer, lang, ...

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def error(self, problem: str, hint: str) -> TuneloopError:
        return TuneloopError(f"{self.where}: {problem}", hint=hint)


def resolve_data_path(data: str | Path) -> Path:
    """A JSONL file, or a dataset folder from `tuneloop data prepare` (its val.jsonl)."""
    path = Path(data).expanduser()
    if path.is_dir():
        if not (path / "val.jsonl").is_file():
            raise TuneloopError(
                f"dataset folder '{path}' has no val.jsonl",
                hint="pass a JSONL file, or a folder written by `tuneloop data prepare`",
            )
        return path / "val.jsonl"
    if not path.is_file():
        raise TuneloopError(
            f"evaluation data '{path}' does not exist", hint="check the path to the JSONL file"
        )
    return path


def read_rows(data: str | Path) -> tuple[list[Row], Kind]:
    """All rows of the file and their kind; a bad line is an error naming file and line."""
    path = resolve_data_path(data)
    rows: list[Row] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                rows.append(_parse(line, str(path), number))
    if not rows:
        raise TuneloopError(f"evaluation data '{path}' is empty", hint="it needs one JSON object per line")
    return rows, _kind(rows)


def rows_from_dicts(records: list[dict[str, Any]], name: str = "<rows>") -> tuple[list[Row], Kind]:
    """The same checks for rows already in memory (the trainer passes its validation split)."""
    rows = [_from_dict(r, name, i) for i, r in enumerate(records, start=1)]
    if not rows:
        raise TuneloopError("no evaluation rows given", hint="pass at least one row")
    return rows, _kind(rows)


def _parse(line: str, file: str, number: int) -> Row:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TuneloopError(
            f"{file}:{number}: invalid JSON ({e.msg} at column {e.colno})",
            hint="each line must be one JSON object",
        ) from None
    return _from_dict(record, file, number)


def _from_dict(record: Any, file: str, number: int) -> Row:
    row = Row(file, number)
    if not isinstance(record, dict):
        raise row.error(f"expected a JSON object, got {type(record).__name__}", _SHAPE_HINT)
    meta = {k: v for k, v in record.items() if k not in ("messages", "text")}
    if "messages" in record:
        row.messages, row.meta = _messages(row, record["messages"]), meta
    elif isinstance(record.get("text"), str):
        row.text, row.meta = record["text"], meta
    else:
        raise row.error(f"row has neither 'messages' nor 'text' (keys: {sorted(record)[:8]})", _SHAPE_HINT)
    if "answer" in meta and not isinstance(meta["answer"], str):
        raise row.error("'answer' must be a string", 'e.g. "answer": "64 devices"')
    return row


_SHAPE_HINT = 'SFT rows are {"messages": [{"role": ..., "content": ...}]}; text rows are {"text": ...}'


def _messages(row: Row, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise row.error("'messages' must be a non-empty list", _SHAPE_HINT)
    for i, m in enumerate(messages):
        ok = isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        if not ok:
            raise row.error(
                f"message {i} needs a role ({'/'.join(sorted(ROLES))}) and string content", _SHAPE_HINT
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise row.error("no assistant turn to score", "each SFT row needs at least one assistant reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _kind(rows: list[Row]) -> Kind:
    first: Kind = "sft" if rows[0].messages is not None else "text"
    for row in rows:
        kind: Kind = "sft" if row.messages is not None else "text"
        if kind != first:
            raise row.error(
                f"a {kind} row in a file whose first row is {first}",
                "keep SFT and text rows in separate files",
            )
    return first
