"""The request log: one JSON line per request and response (OpenAI format), rotated by size.

Ready for Filebeat/ELK and for the loop stage, which curates feedback-rated answers into training
data. Lines carry the request id, key id (never the key), model, variant, latency and tokens.

Private by default: texts (request, response, error, metadata) have PII replaced by placeholders
and `user` is a pseudonym (serve.privacy); files are owner-only (0600 in a 0700 folder). Lines are
redacted, serialized and written by one writer thread, so the detectors' cost never holds up the
event loop; a bounded queue in front of it pushes back on the server rather than dropping a line.
Writes and `retention.purge_log` take one lock (a thread lock plus `flock` on a lock file), so a
purge from `tuneloop logs purge` in another process never interleaves with a write or a rotation.
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import queue
import threading
import time
from pathlib import Path
from typing import Any

from tuneloop import paths
from tuneloop.interactions.permissions import open_private, private_dir, private_file, tighten
from tuneloop.interactions.privacy import OFF, Privacy

log = logging.getLogger("tuneloop.serve")

TEXT_FIELDS = ("request", "response", "error", "metadata")  # what people wrote or read: redacted
QUEUE_MAX = 4096  # lines waiting for the writer; beyond this `write` waits (never drops a line)


def default_path() -> Path:
    return paths.serve_dir() / "requests.jsonl"


def files(path: Path) -> list[Path]:
    """The log's files, newest first: the current one, then rotations .1, .2, ..."""
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.name[len(path.name) + 1 :].isdigit()]
    rotated.sort(key=lambda p: int(p.name[len(path.name) + 1 :]))
    return ([path] if path.is_file() else []) + rotated


class LogLock:
    """Excludes writers and purgers of one log: threads of this process, and other processes."""

    def __init__(self, path: Path):
        lock_path = path.with_name(f".{path.name}.lock")  # hidden: not one of the log's files
        private_file(lock_path)
        self._file = open_private(lock_path, "a")
        self._thread = threading.Lock()  # flock does not exclude threads sharing one open file

    def __enter__(self) -> LogLock:
        self._thread.acquire()
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._thread.release()

    def close(self) -> None:
        self._file.close()


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotation by the logging module; each new file (first, or after a rollover) created 0600."""

    def _open(self):
        return open_private(Path(self.baseFilename), "a", encoding=self.encoding or "utf-8")


class RequestLog:
    def __init__(
        self,
        path: str | Path | None = None,
        max_bytes: int = 50 << 20,
        backups: int = 10,
        privacy: Privacy = OFF,
    ):
        self.path = Path(path) if path else default_path()
        self.privacy = privacy
        ours = self.path.resolve().parent == paths.serve_dir(create=False)  # else a folder the operator chose
        private_dir(self.path.parent, ours=ours)
        for existing in files(self.path):  # written by an older server, or at 0644 before this one
            tighten(existing)
        self.lock = LogLock(self.path)
        self._handler = _PrivateRotatingHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        # a private logger keeps the lines off the root logger's handlers
        self._logger = logging.getLogger(f"tuneloop.requestlog.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._queue: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue(QUEUE_MAX)
        self._writer = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._writer.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one line (stamped now); it is redacted and written by the writer thread."""
        self._queue.put((round(time.time(), 3), record))

    def flush(self) -> None:
        """Wait until every line queued so far is in the file."""
        self._queue.join()

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._logger.removeHandler(self._handler)
        self._handler.close()
        self.lock.close()

    def line(self, stamp: float, record: dict[str, Any]) -> str:
        """The JSON line of a record as stored: texts redacted, `user` as its pseudonym."""
        p = self.privacy
        out = {"time": stamp, **record}
        if "user" in out:
            out["user"] = p.user(out["user"])
        for field in TEXT_FIELDS:
            value = out.get(field)
            if isinstance(value, dict) and isinstance(value.get("user"), str):  # a `user`: its pseudonym
                rest = p.value({k: v for k, v in value.items() if k != "user"})
                out[field] = {**rest, "user": p.user(value["user"])}
            elif value is not None:
                out[field] = p.value(value)
        return json.dumps(out, ensure_ascii=False, default=str)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 256:  # whatever else is waiting goes in under one lock
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([item for item in batch if item is not None])
            except Exception:  # a bad record or a full disk must not end the writer thread
                log.exception("the request log could not write %d line(s) to %s", len(batch), self.path)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if any(item is None for item in batch):
                return

    def _write(self, items: list[tuple[float, dict[str, Any]]]) -> None:
        lines = []
        for stamp, record in items:
            try:
                lines.append(self.line(stamp, record))
            except Exception:  # one unserializable record costs its own line only
                log.exception("request-log record %s could not be written", record.get("request_id"))
        if lines:
            with self.lock:
                for text in lines:
                    self._logger.info(text)


def read(path: str | Path) -> list[dict[str, Any]]:
    """All records of one log file (tests, export)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_log(path: Path, wanted: set[str] | None = None, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Log records by response id (rotated files too), optionally only `wanted` ids or newer than `since`."""
    found: dict[str, dict[str, Any]] = {}
    for file in sorted(path.parent.glob(path.name + "*"), reverse=True):  # oldest rotation first
        if file.suffix == ".tmp" or not file.is_file():
            continue
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write: not an answer anyone rated
                rid = record.get("response_id")
                if rid and (wanted is None or rid in wanted) and record.get("time", 0.0) >= since:
                    found[rid] = record
    return found
