"""The request log: one JSON line per request and response (OpenAI format), rotated by size.

Ready for Filebeat/ELK and for the loop stage, which curates feedback-rated answers into training
data. Lines carry the request id, key id (never the key), model, variant, latency and tokens.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

from tuneloop import paths


def default_path() -> Path:
    return paths.serve_dir() / "requests.jsonl"


class RequestLog:
    def __init__(
        self,
        path: str | Path | None = None,
        max_bytes: int = 50 << 20,
        backups: int = 10,
        redact_pii: bool = False,
    ):
        self.path = Path(path) if path else default_path()
        self.redact_pii = redact_pii
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The logging module's handler does rotation and locking; a private logger keeps it off root.
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"tuneloop.requestlog.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        if self.redact_pii:
            record = _redacted(record)
        self._logger.info(json.dumps(record, ensure_ascii=False, default=str))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()


def _redacted(value: Any) -> Any:
    """Every string inside the record with PII replaced (the data stage's validated detectors)."""
    from tuneloop.data.pii import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def read(path: str | Path) -> list[dict[str, Any]]:
    """All records of one log file (tests, export)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
