"""The judge's memory and its audit trail.

`JudgeCache` (SQLite, WAL: several processes may share it) maps a key — a hash of the judge's
identity, the sampling settings, the prompt version and the exact messages sent (rubric and inputs
are in them) — to the reply, so the same question is never paid for twice. Only replies are cached;
failures are not. `AuditLog` appends one JSON line per prompt asked or answered from the cache: the
messages, the raw reply, what was read from it, tokens and errors.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import paths
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge_backends import Completion, Messages
from tuneloop.evaluation.judge_prompts import PROMPT_VERSION


def default_cache_path() -> Path:
    return paths.home() / "judge" / "cache.sqlite"


def default_log_path() -> Path:
    return paths.home() / "judge" / "log.jsonl"


def cache_key(identity: str, messages: Messages, max_tokens: int, temperature: float) -> str:
    blob = json.dumps(
        {"judge": identity, "v": PROMPT_VERSION, "max_tokens": max_tokens, "t": temperature, "m": messages},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgeCache:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, judge TEXT NOT NULL, "
                "text TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
            )
            self._db.commit()
        except (sqlite3.Error, OSError) as e:
            raise TuneloopError(
                f"judge.cache '{path}' cannot be used: {e}",
                hint="point judge.cache at another file, delete this one, or set judge.use_cache=false",
            ) from None

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, prompt_tokens, completion_tokens FROM replies WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                found.update({k: Completion(t, p or 0, c or 0) for k, t, p, c in rows})
        return found

    def put_many(self, judge: str, items: list[tuple[str, Completion]]) -> None:
        rows = [
            (k, judge, c.text, c.prompt_tokens, c.completion_tokens, time.time())
            for k, c in items
            if c.error is None
        ]
        if not rows:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class AuditLog:
    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        except OSError as e:
            raise TuneloopError(
                f"judge.log '{path}' cannot be written: {e.strerror or e}",
                hint="point judge.log at a file you can write",
            ) from None
        self._lock = threading.Lock()

    def write(self, records: list[dict[str, Any]]) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        text = "".join(json.dumps({"time": now, **r}, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
