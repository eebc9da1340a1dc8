"""Raw documents to training-ready datasets: read, clean, filter, redact PII, dedup, chunk, split.

`prepare(inputs, out, config)` is the entry point; `executors/` run the same steps locally (all
cores) or on Spark. See `pipeline.py` for the order of the steps.
"""

from tuneloop.data.config import DataConfig

__all__ = ["DataConfig", "prepare"]


def prepare(*args, **kwargs):
    """Run the pipeline (see `tuneloop.data.pipeline.prepare`)."""
    from tuneloop.data.pipeline import prepare as _prepare

    return _prepare(*args, **kwargs)
