"""Experiment tracking on process 0: MLflow (SQLite in TUNELOOP_HOME by default), TensorBoard, W&B.

Each backend is optional and imported lazily; one that is asked for but missing is an error that
names the extra, never a silent skip. W&B is used when installed and configured (`wandb=auto`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneloop import paths
from tuneloop.errors import missing_extra
from tuneloop.train.config import TrainConfig


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

    def start(self, resume_run_id: str | None = None) -> None:
        if not self.enabled:
            return
        t = self.cfg.tracking
        if t.mlflow:
            self._start_mlflow(resume_run_id)
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
        mlflow.set_experiment(self.cfg.tracking.experiment)
        run = mlflow.start_run(
            run_id=resume_run_id,
            run_name=None if resume_run_id else self.cfg.run_name(),
            log_system_metrics=self.cfg.tracking.system_metrics,
        )
        self.mlflow, self.run_id = mlflow, run.info.run_id
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
