"""Logging for training: rich, on process 0 only (other processes log warnings)."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    from rich.logging import RichHandler

    rank = int(os.environ.get("RANK", "0"))
    logger = logging.getLogger("tuneloop")
    if any(isinstance(h, RichHandler) for h in logger.handlers):
        return
    logger.addHandler(RichHandler(show_path=False, markup=False, log_time_format="[%X]"))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
