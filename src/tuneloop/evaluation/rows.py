"""Reading an evaluation set: a JSONL file (or a prepared dataset folder's val.jsonl) into rows.

Every row keeps its file and line, so any later complaint ("no assistant turn to score") can say
exactly where the problem is. Rows are SFT (`messages`) or text (`text`); one file holds one kind.
`check_row` is the one structural check of a dataset row: the trainer runs it on every row too
(before it loads a model), so train and eval accept and refuse the same rows with the same words.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.data.layout import sharded_split
from tuneloop.data.tool_rows import ToolRowError, check_tool_use, check_tools, keep_message
from tuneloop.errors import TuneloopError

Kind = Literal["sft", "text"]  # what `tuneloop eval` scores
# what a dataset row can be (training also takes pairs, and unpaired answers with a thumbs label for KTO)
RowKind = Literal["sft", "text", "preference", "unpaired"]
ROLES = {"system", "user", "assistant", "tool"}
KIND_NAMES: dict[RowKind, str] = {
    "sft": "SFT (messages)",
    "text": "pretraining (text)",
    "preference": "preference (prompt/chosen/rejected)",
    "unpaired": "unpaired preference (prompt/completion/label)",
}


@dataclass
class Row:
    file: str
    line: int
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # id, answer, lang, ...
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools of an SFT row (data/tool_rows.py)
    prompt: list[dict[str, str]] | None = None  # preference rows (training only)
    chosen: list[dict[str, str]] | None = None
    rejected: list[dict[str, str]] | None = None
    completion: list[dict[str, str]] | None = None  # unpaired rows (KTO): one answer and its label
    label: bool | None = None

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
    shards = sharded_split(data, "val")  # a prepared dataset (folder or URL): its val shards
    if shards is not None:
        rows, path = [_parse(line, where, number) for where, number, line in shards.lines()], data
    else:
        path = resolve_data_path(data)
        rows = [_parse(line, str(path), number) for number, line in jsonl_lines(path)]
    if not rows:
        raise TuneloopError(f"evaluation data '{path}' is empty", hint="it needs one JSON object per line")
    return rows, _kind(rows)


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a UTF-8 file; another encoding names its line."""
    if Path(path).is_dir():
        raise TuneloopError(f"'{path}' is a folder, not a JSONL file")
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM is not JSON
            except UnicodeDecodeError as e:
                raise TuneloopError(
                    f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)",
                    hint="JSONL files are UTF-8: convert it (iconv -f GB18030 -t UTF-8), or run it through "
                    "`tuneloop data prepare`, which detects the encoding",
                ) from None
            if line.strip():
                yield number, line


def rows_from_dicts(records: list[dict[str, Any]], name: str = "<rows>") -> tuple[list[Row], Kind]:
    """The same checks for rows already in memory (the trainer passes its validation split)."""
    rows = [_from_dict(r, name, i) for i, r in enumerate(records, start=1)]
    if not rows:
        raise TuneloopError("no evaluation rows given", hint="pass at least one row")
    return rows, _kind(rows)


def _parse(line: str, file: str, number: int) -> Row:
    return _from_dict(parse_json_line(line, file, number), file, number)


def parse_json_line(line: str, file: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise TuneloopError(
            f"{file}:{number}: invalid JSON ({e.msg} at column {e.colno})",
            hint="each line must be one JSON object",
        ) from None


def _from_dict(record: Any, file: str, number: int) -> Row:
    row = check_row(record, file, number, kinds=("sft", "text"))
    if "answer" in row.meta and not isinstance(row.meta["answer"], str):
        raise row.error("'answer' must be a string", 'e.g. "answer": "64 devices"')
    return row


# ---------------------------------------------------------------- the one row check (train and eval)

_SHAPE_HINT = 'SFT rows are {"messages": [{"role": ..., "content": ...}]}; text rows are {"text": ...}'
_PAIR_HINT = 'preference rows are {"prompt": [...], "chosen": [...], "rejected": [...]}'
_UNPAIRED_HINT = (
    'unpaired rows (objective=kto) are {"prompt": [...], "completion": [...], "label": true|false}: '
    "true for a desirable answer (thumbs up), false for an undesirable one"
)
_FIELDS = ("messages", "text", "prompt", "chosen", "rejected", "completion", "label", "tools")


def row_kind(record: Any) -> RowKind | None:
    """What a row holds by its keys (None: nothing we know)."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "sft"
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "completion" in record or "label" in record:
        return "unpaired"
    return "text" if "text" in record else None


def check_row(record: Any, file: str, number: int, kinds: tuple[RowKind, ...]) -> Row:
    """The structure of one dataset row, checked the same way for training and evaluation.

    Roles, string contents and an assistant turn to learn from (or score) are required; an error
    names the file, the line, the field and the message that is wrong.
    """
    row = Row(file, number)
    if not isinstance(record, dict):
        raise row.error(f"expected a JSON object, got {type(record).__name__}", _SHAPE_HINT)
    kind = row_kind(record)
    if kind is None:
        raise row.error(f"row has neither 'messages' nor 'text' (keys: {sorted(record)[:8]})", _SHAPE_HINT)
    if kind not in kinds:
        wanted = " or ".join(KIND_NAMES[k] for k in kinds)
        raise row.error(f"a {KIND_NAMES[kind]} row where {wanted} rows are expected", _SHAPE_HINT)
    row.meta = {k: v for k, v in record.items() if k not in _FIELDS}
    if kind == "sft":
        row.messages = _messages(row, record["messages"], "messages")
        _require_assistant(row, row.messages, "messages")
        _tool_use(row, record, {"messages": row.messages})
    elif kind == "text":
        if not isinstance(record["text"], str):
            raise row.error(f"'text' must be a string, not {_type(record['text'])}", _SHAPE_HINT)
        row.text = record["text"]
    elif kind == "unpaired":
        _unpaired(row, record)
    else:
        row.prompt = _messages(row, as_messages(record.get("prompt", []), "user"), "prompt", empty_ok=True)
        for side in ("chosen", "rejected"):
            if side not in record:
                raise row.error(f"preference row without '{side}'", _PAIR_HINT)
            msgs = _messages(row, as_messages(record[side], "assistant"), side)
            _require_assistant(row, msgs, side)
            setattr(row, side, msgs)
        _tool_use(row, record, {side: row.prompt + getattr(row, side) for side in ("chosen", "rejected")})
    return row


def _unpaired(row: Row, record: dict[str, Any]) -> None:
    """TRL's unpaired preference row: a prompt, one answer to it, and whether that answer is desirable."""
    for key in ("prompt", "completion", "label"):
        if key not in record:
            raise row.error(f"unpaired row without '{key}'", _UNPAIRED_HINT)
    if type(record["label"]) is not bool:  # 1/0 or "yes" would silently mean something
        raise row.error(
            f"'label' must be true or false, not {_type(record['label'])} {record['label']!r}", _UNPAIRED_HINT
        )
    row.prompt = _messages(row, as_messages(record["prompt"], "user"), "prompt")
    row.completion = _messages(row, as_messages(record["completion"], "assistant"), "completion")
    if not any(m["role"] == "assistant" for m in row.completion):
        raise row.error("no assistant turn in 'completion' to train on", _UNPAIRED_HINT)
    _tool_use(row, record, {"completion": row.prompt + row.completion})
    if not any(
        m["content"].strip() or m.get("tool_calls") for m in row.completion if m["role"] == "assistant"
    ):
        raise row.error("'completion' is empty: there is no answer to learn from", _UNPAIRED_HINT)
    row.label = record["label"]


def as_messages(value: Any, role: str) -> Any:
    """A preference side as messages: a string is one message of `role`, a dict one message."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [value] if isinstance(value, dict) else value


def _messages(row: Row, messages: Any, name: str, empty_ok: bool = False) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not (messages or empty_ok):
        raise row.error(f"'{name}' must be a non-empty list of messages", _SHAPE_HINT)
    where = "" if name == "messages" else f"'{name}' "
    for i, m in enumerate(messages):
        problem = _message_problem(m)
        if problem:
            raise row.error(f"{where}message {i} {problem}", _SHAPE_HINT)
    return [keep_message(m) for m in messages]


def _tool_use(row: Row, record: dict[str, Any], conversations: dict[str, list[dict[str, Any]]]) -> None:
    """`tools` and the tool calls of each conversation (a preference row's prompt + answer) agree;
    data/tool_rows.py names the field that does not."""
    try:
        names = set(check_tools(record["tools"])) if record.get("tools") is not None else None
        for name, messages in conversations.items():
            check_tool_use(messages, names, field=name)
    except ToolRowError as e:
        raise row.error(f"{e.field}: {e.problem}", e.hint) from None
    row.tools = record.get("tools")


def _message_problem(m: Any) -> str | None:
    roles = "/".join(sorted(ROLES))
    if not isinstance(m, dict):
        return f"must be an object with a role ({roles}) and string content, not {_type(m)}"
    if "role" not in m:
        return f"has no 'role' (one of {roles})"
    if m["role"] not in ROLES:
        return f"has role {m['role']!r}, not one of {roles}"
    if m.get("content") is None and m["role"] == "assistant" and m.get("tool_calls"):
        return None  # an assistant turn that only calls tools has no text (null, as in the OpenAI API)
    if "content" not in m:
        return "has no 'content'"
    if not isinstance(m["content"], str):
        return f"has {_type(m['content'])} content; content must be a string"
    return None


def _require_assistant(row: Row, messages: list[dict[str, str]], name: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        where = "" if name == "messages" else f" in '{name}'"
        raise row.error(
            f"no assistant turn{where} to train on or score",
            "each SFT row (and each preference answer) needs at least one assistant reply",
        )


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


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
