"""Resumable synthesis: one JSON line per finished chunk in `<out>/.synth/progress.jsonl`, appended
and flushed as chunks finish, so an interrupted run loses at most the chunks in flight and a rerun
asks the teacher only about the others. The first line holds the settings that shape the rows; a
rerun with other settings refuses the old progress by name instead of mixing two datasets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

FOLDER = ".synth"


@dataclass
class ChunkRecord:
    chunk: str  # Chunk.id
    sha: str  # Chunk.sha: an edited document is a new chunk
    status: str  # "done" | "malformed" | "teacher_error"
    rows: list[dict[str, Any]] = field(default_factory=list)  # grounded rows, before dedup and leakage
    rejected: dict[str, int] = field(default_factory=dict)  # per row: malformed, ungrounded
    error: str | None = None
    tries: int = 1
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__


class Progress:
    def __init__(self, out: Path, settings: dict[str, Any], fresh: bool = False):
        self.path = out / FOLDER / "progress.jsonl"
        self.settings = settings
        self.records: dict[str, ChunkRecord] = {}
        if fresh and self.path.exists():
            self.path.unlink()
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"settings": settings})

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("settings") != self.settings:
            old = head.get("settings") or {}
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            raise TuneloopError(
                f"{self.path} holds the progress of a run with other settings ({', '.join(changed)})",
                hint="rerun with the same settings to resume, or pass --fresh to start over",
            )
        for line in lines[1:]:
            try:
                data = json.loads(line)
            except ValueError:
                continue  # the line being written when the run was killed: that chunk is asked again
            self.records[data["chunk"]] = ChunkRecord(**data)

    def done(self, chunk_id: str, sha: str) -> bool:
        r = self.records.get(chunk_id)
        return r is not None and r.sha == sha and r.status == "done"

    def save(self, records: list[ChunkRecord]) -> None:
        for r in records:
            self.records[r.chunk] = r
        with self.path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _append(self, data: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
