"""`Doc`: one record flowing through the pipeline, identified by (file index, record index).

`row` is already the output shape ({"text"}, {"messages"} or {"prompt","chosen","rejected"}), so
steps that rewrite text (clean, PII) walk every string in it with `map_text`, and steps that judge
text (quality, dedup) look at `view()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Structure, not text: roles, and tool use's names, ids and schemas (data/tool_rows.py). Cleaning or
# redacting them would break the row (a call to a renamed function, an id no tool message answers).
# A call's `arguments` string is text (PII in it is redacted); the JSON stays valid.
STRUCTURE = frozenset({"role", "tools", "tool_call_id", "id", "type", "name"})


@dataclass(slots=True)
class Doc:
    file: int  # index of the input file in the sorted input list
    index: int  # record number inside the file (0-based)
    id: str  # "relative/path:line", stable across machines and engines
    row: dict[str, Any]

    @property
    def order(self) -> tuple[int, int]:
        """Global canonical order: dedup keeps the first, outputs follow it."""
        return (self.file, self.index)

    def view(self) -> str:
        """All text of the record, joined: what filters and dedup judge."""
        if "text" in self.row:
            return self.row["text"]
        return "\n".join(_strings(self.row))

    def dedup_view(self) -> str:
        """What dedup compares: like `view()`, but without system messages.

        Chat sets often share one long system prompt; compared with it, every pair of short
        conversations would look like near-duplicates.
        """
        if "text" in self.row:
            return self.row["text"]
        return "\n".join(_strings({k: _without_system(v) for k, v in self.row.items()}))

    def map_text(self, fn: Callable[[str], str]) -> None:
        """Rewrite every text field in place (message contents, prompt/chosen/rejected)."""
        self.row = _map(self.row, fn)

    def to_json(self) -> dict[str, Any]:
        return {"f": self.file, "i": self.index, "id": self.id, "row": self.row}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Doc:
        return cls(data["f"], data["i"], data["id"], data["row"])


def _without_system(value: Any) -> Any:
    if isinstance(value, list):
        return [m for m in value if not (isinstance(m, dict) and m.get("role") == "system")]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        # roles are structure, not text: keep them out of the judged view
        return [s for k, v in value.items() if k not in STRUCTURE for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _map(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: (v if k in STRUCTURE else _map(v, fn)) for k, v in value.items()}
    if isinstance(value, list):
        return [_map(v, fn) for v in value]
    return value
