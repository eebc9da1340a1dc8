"""Raw documents to training-ready datasets: read, clean, filter, redact PII, dedup, chunk, split.

`prepare(inputs, out, config)` (in `run.py`) is the entry point; `executors/` run the same steps
locally (all cores) or on Spark. See `pipeline.py` for the order of the steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneloop.data.config import DataConfig

if TYPE_CHECKING:
    from tuneloop.data.run import prepare

__all__ = ["DataConfig", "prepare"]


def __getattr__(name: str) -> object:
    # The gateway imports `tuneloop.data.pii` (and so this package) without the data extra; the
    # pipeline behind `prepare` needs it (numpy, pyarrow, tokenizers), so it loads on first use.
    if name == "prepare":
        from tuneloop.data.run import prepare

        return prepare
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
