"""The gate's and the canary's numbers on the cycle's MLflow run (the cycle's training run, when tracked).

Every check becomes metrics `gate.<check>.<field>` / `canary.<check>.<field>` (difference, interval
bounds, counts, rates) and the decision a tag `tuneloop.gate` / `tuneloop.canary`, next to the
training curves of the run that made the candidate. decisions.jsonl stays the record; a tracking
server that does not answer costs a warning, not the cycle.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIELDS = ("diff", "low", "high", "production", "candidate", "p_value", "e_value")


def cycle_run(run_dir: str | Path) -> tuple[str, str] | None:
    """(tracking URI, run id) of a training run folder, or None when it was not tracked in MLflow."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_id, uri = info.get("mlflow_run_id"), info.get("tracking_uri")
    return (str(uri), str(run_id)) if run_id and uri else None


def metrics_of(stage: str, numbers: dict[str, Any]) -> dict[str, float]:
    """Flat metric names and values of a decision's checks."""
    out: dict[str, float] = {}
    for c in numbers.get("checks", []):
        name = re.sub(r"[^\w./ -]", "_", f"{stage}.{c['name']}")
        for key in FIELDS:
            if isinstance(c.get(key), (int, float)) and c[key] is not None:
                out[f"{name}.{key}"] = float(c[key])
        n = c.get("n")
        if isinstance(n, int):
            out[f"{name}.n"] = float(n)
        elif isinstance(n, list):  # canary: (candidate, production)
            out[f"{name}.n_candidate"], out[f"{name}.n_production"] = (float(x) for x in n)
    for key in ("elapsed_s", "confidence"):
        if isinstance(numbers.get(key), (int, float)):
            out[f"{stage}.{key}"] = float(numbers[key])
    return out


def log_decision(
    run_dir: str | Path | None,
    stage: str,
    decision: str,
    numbers: dict[str, Any],
    warn: Callable[[str], None],
) -> str | None:
    """Log one decision to the cycle's run; returns the run id, or None (not tracked, or it failed)."""
    found = cycle_run(run_dir) if run_dir else None
    if found is None:
        return None
    uri, run_id = found
    try:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in metrics_of(stage, numbers).items()]
        tags = [RunTag(f"tuneloop.{stage}", decision)]
        client.log_batch(run_id, metrics=metrics, tags=tags)
    except Exception as e:  # the decision is in decisions.jsonl whatever MLflow says
        warn(f"[{stage}] could not log the decision to MLflow run {run_id} at {uri}: {e}")
        return None
    return run_id
