"""Resumable stages, shared by the flows: a JSON state file rewritten atomically after every finished stage.

Two shapes of the same idea:
- `State` (the quickstart): one record per finished stage, with a key made from everything it read
  (files by content, folders by name/size/mtime, settings). A rerun skips a stage only when its key
  is unchanged *and* its outputs still check out; an unreadable state file is reported and
  ignored, so a bad state costs a redo, never a wrong result.
- `run_stages` (the loop's cycle): the state names the next stage; each stage returns the name of
  the one after it (the state is saved before it runs) or the flow's result, so a stopped flow
  continues at the stage it was in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tuneloop.models.store import sha256_file
from tuneloop.paths import write_atomic

STATE_VERSION = 1
R = TypeVar("R")


class State:
    def __init__(self, workdir: Path):
        self.path = workdir / "state.json"
        self.problem: str | None = None  # why an existing state file was ignored
        self.data = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": STATE_VERSION, "stages": {}}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.problem = f"{self.path} is unreadable ({type(e).__name__}); every stage is checked again"
            return {"version": STATE_VERSION, "stages": {}}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            self.problem = f"{self.path} is not a state file of this version; every stage is checked again"
            return {"version": STATE_VERSION, "stages": {}}
        if not isinstance(data.get("stages"), dict):
            data["stages"] = {}
        return data

    def record(self, stage: str, key: str) -> dict[str, Any] | None:
        """What `stage` recorded when it finished with the same input key, else None."""
        found = self.data["stages"].get(stage)
        if isinstance(found, dict) and found.get("key") == key:
            return found
        return None

    def done(self, stage: str, key: str, **outputs: Any) -> None:
        self.data["stages"][stage] = {"key": key, **outputs}
        self._write()

    def forget(self, *stages: str) -> None:
        for stage in stages:
            self.data["stages"].pop(stage, None)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def run_stages(
    state: dict[str, Any],
    run: Callable[[str, dict[str, Any]], str | R],
    save: Callable[[dict[str, Any]], None],
) -> R:
    """Run `state["stage"]` and the stages after it until one returns a result instead of a stage name;
    `save` persists the state each time a stage has finished (the resume point)."""
    while True:
        result = run(state["stage"], state)
        if not isinstance(result, str):
            return result
        state["stage"] = result
        save(state)


def key_of(*parts: Any) -> str:
    """A short stable digest of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return sha256_file(path)


def tree_digest(root: Path, *, contents: bool) -> str:
    """Every file under `root`: by content (small inputs) or by name, size and mtime (model weights)."""
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        what = file_digest(path) if contents else f"{stat.st_size}:{stat.st_mtime_ns}"
        sha.update(f"{path.relative_to(root)}={what}\n".encode())
    return sha.hexdigest()[:16]
