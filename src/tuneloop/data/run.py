"""`prepare(inputs, out, config)`: the data pipeline's entry point, which picks an executor.

The executors import the engine-neutral steps from `pipeline.py`; this module sits above both, so
the pipeline never imports an executor.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneloop.data.config import DataConfig
from tuneloop.data.executors.local import run_local
from tuneloop.data.executors.spark import run_spark


def prepare(
    inputs: list[str],
    out: str | Path,
    cfg: DataConfig | None = None,
    *,
    engine: str = "local",
    workers: int | None = None,
    spark_master: str = "local[*]",
    progress: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline and return the manifest (also written to `out/manifest.json`)."""
    cfg = cfg or DataConfig()
    out = Path(out)
    created = not out.exists()
    try:
        if engine == "spark":
            return run_spark(inputs, out, cfg, master=spark_master, progress=progress)
        return run_local(inputs, out, cfg, workers=workers, progress=progress)
    except BaseException:
        _discard_work(out, created)
        raise


def _discard_work(out: Path, created: bool) -> None:
    """After a failed run: the shards go, and so does an output folder this run created and left empty."""
    shutil.rmtree(out / ".tuneloop-work", ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
