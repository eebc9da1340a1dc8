"""Experiment tracking on process 0: MLflow (SQLite in TUNELOOP_HOME by default), TensorBoard, W&B.

Each backend is optional and imported lazily; one that is asked for but missing is an error that
names the extra, never a silent skip. W&B is used when installed and configured (`wandb=auto`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import psutil

from tuneloop import paths
from tuneloop.errors import missing_extra
from tuneloop.train import segments as lineage
from tuneloop.train.config import TrainConfig

log = logging.getLogger("tuneloop.train")
# MLflow's limit on a tag value; the segments summary is cut to fit (run.json keeps all of it)
TAG_LIMIT = 5000


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    def __init__(self, cfg: TrainConfig, run_dir: Path, enabled: bool = True):
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self.mlflow: Any = None
        self.tb: Any = None
        self.wandb: Any = None
        self.run_id: str | None = None
        self.tracking_uri: str | None = None

    def start(self, resume_run_id: str | None = None, segments: list[dict[str, Any]] | None = None) -> None:
        if not self.enabled:
            return
        t = self.cfg.tracking
        if t.mlflow:
            self._start_mlflow(resume_run_id)
            self._log_segment(segments or [])
        if t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise missing_extra("tensorboard", "train") from None
            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if t.wandb is True or (t.wandb == "auto" and os.environ.get("WANDB_API_KEY")):
            self._start_wandb()

    def _start_mlflow(self, resume_run_id: str | None) -> None:
        try:
            import mlflow
        except ImportError:
            raise missing_extra("mlflow", "train") from None
        self.tracking_uri = self.cfg.tracking.tracking_uri or paths.mlflow_tracking_uri()
        # MLflow 3's set_tracking_uri also exports MLFLOW_TRACKING_URI; put it back in finish(), or every
        # later Registry in this process (quickstart, the loop, tests) would follow this run's store
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.cfg.tracking.experiment) is None:
            mlflow.create_experiment(
                self.cfg.tracking.experiment,
                artifact_location=(paths.artifacts_dir() / self.cfg.tracking.experiment).as_uri(),
            )
        experiment = mlflow.set_experiment(self.cfg.tracking.experiment)
        _fail_abandoned_runs(mlflow.MlflowClient(), experiment.experiment_id, keep=resume_run_id)
        run = mlflow.start_run(
            run_id=resume_run_id,
            run_name=None if resume_run_id else self.cfg.run_name(),
            log_system_metrics=self.cfg.tracking.system_metrics,
        )
        self.mlflow, self.run_id = mlflow, run.info.run_id
        me = psutil.Process()
        # who runs it now: the next start on this host marks the run FAILED if this process is gone
        mlflow.set_tags(
            {
                "tuneloop.host": socket.gethostname(),
                "tuneloop.pid": me.pid,
                "tuneloop.pid_started": me.create_time(),
            }
        )
        if not resume_run_id:
            params = flatten(self.cfg.model_dump(mode="json"))
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.set_tags(
                {
                    "tuneloop.run_dir": str(self.run_dir),
                    "tuneloop.objective": self.cfg.objective,
                    "tuneloop.method": self.cfg.method,
                }
            )

    def _start_wandb(self) -> None:
        try:
            import wandb
        except ImportError:
            if self.cfg.tracking.wandb is True:
                raise missing_extra("wandb", "train") from None
            return
        self.wandb = wandb.init(
            project=self.cfg.tracking.experiment,
            name=self.cfg.run_name(),
            config=self.cfg.model_dump(mode="json"),
            dir=str(self.run_dir),
        )

    def _log_segment(self, segments: list[dict[str, Any]]) -> None:
        """The settings of a new segment: params of the first; `segment.N.KEY` params for what segment N
        changed (MLflow params cannot change value), and the summary of all segments as a tag."""
        if not (self.mlflow and segments):
            return
        last = segments[-1]
        if len(segments) > 1 and last["starts"] == 1:
            n = len(segments) - 1
            self.mlflow.log_params(
                {f"segment.{n}.{k}": str(v["new"])[:500] for k, v in last.get("changed", {}).items()}
            )
            self.mlflow.log_param(f"segment.{n}.from_step", last["from_step"])
        self.record_segments(segments)

    def record_segments(self, segments: list[dict[str, Any]]) -> None:
        if self.mlflow and segments:
            text = json.dumps(lineage.summary(segments))
            self.mlflow.set_tags(
                {
                    "tuneloop.segments": text[:TAG_LIMIT],
                    "tuneloop.segment_count": len(segments),
                    "tuneloop.config_hash": segments[-1]["config_hash"],
                }
            )

    def log_params(self, params: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.log_params({k: str(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        if self.mlflow and path.exists():
            if path.is_dir():
                self.mlflow.log_artifacts(str(path), artifact_path=subdir or path.name)
            else:
                self.mlflow.log_artifact(str(path), artifact_path=subdir)

    def finish(self, status: str = "FINISHED") -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        if self.mlflow:
            self.mlflow.end_run(status=status)
            if self._env_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = self._env_uri


def _fail_abandoned_runs(client: Any, experiment_id: str, keep: str | None) -> None:
    """Mark FAILED the RUNNING runs of this host whose process is gone (killed, lost power): MLflow
    would show them running forever. A run on another host cannot be judged from here."""
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id == keep or tags.get("tuneloop.host") != host or "tuneloop.pid" not in tags:
            continue
        if _alive(int(tags["tuneloop.pid"]), float(tags.get("tuneloop.pid_started", 0))):
            continue
        client.set_tag(
            run.info.run_id,
            "tuneloop.failure",
            "its process ended without finishing the run (killed?); marked failed at the next start",
        )
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning(
            "MLflow run %s was left RUNNING by a process that is gone: marked FAILED", run.info.run_id
        )


def _alive(pid: int, started: float) -> bool:
    """Is `pid` still the process that started the run (not a later one that reuses the number)?"""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
