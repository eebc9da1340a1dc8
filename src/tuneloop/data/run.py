"""`prepare(inputs, out, config)`: the data pipeline's entry point, which picks an executor.

The executors import the engine-neutral steps from `pipeline.py`; this module sits above both, so
the pipeline never imports an executor. `out` is a local folder or any fsspec URL (s3://...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneloop.data.config import DataConfig
from tuneloop.data.destination import Destination
from tuneloop.data.executors.local import run_local
from tuneloop.data.executors.spark import run_spark
from tuneloop.data.layout import is_url


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
    """Run the whole pipeline and return the manifest (also written to `out/manifest.json`, last)."""
    cfg = cfg or DataConfig()
    url = str(out) if is_url(out) else os.path.abspath(os.path.expanduser(out))
    created = not is_url(url) and not os.path.exists(url)
    dest = Destination(url, output_options(url, cfg))
    dest.start()
    try:
        if engine == "spark":
            return run_spark(inputs, dest, cfg, master=spark_master, progress=progress)
        return run_local(inputs, dest, cfg, workers=workers, progress=progress)
    except BaseException:
        dest.abort()  # the shards go; no manifest was written, so nothing looks complete
        if created and os.path.isdir(url) and not os.listdir(url):
            os.rmdir(url)  # an output folder this run created and left empty
        raise


def output_options(url: str, cfg: DataConfig) -> dict[str, Any]:
    opts = dict(cfg.output.storage_options)
    if url.split("://", 1)[0] in ("s3", "s3a") and cfg.output.endpoint_url:
        opts.setdefault("endpoint_url", cfg.output.endpoint_url)
    return opts
