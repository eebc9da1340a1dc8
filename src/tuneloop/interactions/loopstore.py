"""Where a model's loop keeps its state: TUNELOOP_HOME/loop/NAME/.

Written by the loop (flows/loop.py), read by `tuneloop loop status`, the gateway's admin API and
the console.

state.json       the current cycle, its stage and what each finished stage produced (resume point)
cursor.json      the last feedback id and log time consumed by a finished cycle
decisions.jsonl  every decision with the numbers behind it (append-only)
cycles/NNNN/     one folder per cycle: collected batch, curated dataset, training run, gate report
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneloop import paths
from tuneloop.errors import TuneloopError


def loop_dir(name: str, create: bool = True) -> Path:
    path = paths.home() / "loop" / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, data: Any) -> None:
    paths.write_atomic(path, json.dumps(data, indent=2, default=str))


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise TuneloopError(
            f"{path} is not valid JSON", hint="restore it, or delete it to start the loop state afresh"
        ) from None


class LoopStore:
    def __init__(self, name: str):
        self.name = name
        self.root = loop_dir(name)

    # ------------------------------------------------------------ state of the current cycle

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict[str, Any]:
        return _read_json(self.state_path, {"cycle": 0, "stage": "idle", "results": {}})

    def save_state(self, state: dict[str, Any]) -> None:
        _write_json(self.state_path, {**state, "updated": time.time()})

    def cycle_dir(self, cycle: int) -> Path:
        path = self.root / "cycles" / f"{cycle:04d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------ cursor

    def cursor(self) -> dict[str, Any]:
        return _read_json(self.root / "cursor.json", {"feedback_id": 0, "log_time": 0.0})

    def save_cursor(self, cursor: dict[str, Any]) -> None:
        _write_json(self.root / "cursor.json", cursor)

    # ------------------------------------------------------------ decisions

    @property
    def decisions_path(self) -> Path:
        return self.root / "decisions.jsonl"

    def decide(self, cycle: int, stage: str, decision: str, reason: str, **numbers: Any) -> dict[str, Any]:
        entry = {
            "time": round(time.time(), 3),
            "model": self.name,
            "cycle": cycle,
            "stage": stage,
            "decision": decision,
            "reason": reason,
            "numbers": numbers,
        }
        with self.decisions_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def decisions(self, cycle: int | None = None) -> list[dict[str, Any]]:
        if not self.decisions_path.is_file():
            return []
        rows = [
            json.loads(line)
            for line in self.decisions_path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        return [r for r in rows if cycle is None or r["cycle"] == cycle]

    # ------------------------------------------------------------ one loop per model

    @contextmanager
    def locked(self) -> Iterator[LoopStore]:
        with paths.exclusive(
            self.root,
            f"another loop is running for '{self.name}' ({self.root})",
            "wait for it to finish; one loop per model at a time",
        ):
            yield self


def models() -> list[str]:
    root = paths.home() / "loop"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def status(name: str) -> dict[str, Any]:
    """The loop's state and every decision so far (for `tuneloop loop status`)."""
    store = LoopStore(name)
    if not (store.state_path.is_file() or store.decisions_path.is_file()):
        known = models()
        raise TuneloopError(
            f"no loop has run for '{name}'",
            hint=f"loops so far: {', '.join(known)}"
            if known
            else "start one with `tuneloop loop run --model NAME`",
        )
    return {"model": name, "state": store.state(), "cursor": store.cursor(), "decisions": store.decisions()}
