"""Process logs of the server (uvicorn and tuneloop loggers), as text or one JSON object a line.

JSON lines go to stdout for a log shipper (Filebeat, Fluent Bit); the per-request records are in
the request log, not here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_config(json_lines: bool, level: str = "INFO") -> dict[str, Any]:
    """A logging dictConfig for uvicorn.run(log_config=...)."""
    formatter = (
        {"()": JSONFormatter} if json_lines else {"format": "%(levelname)s:     %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stdout"}
    loggers = {
        name: {"handlers": ["default"], "level": level, "propagate": False}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "tuneloop")
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": loggers,
    }
