"""Lineage of a training run, read from its folder and turned into registry tags.

Tags (all strings, namespaced `tuneloop.`): the base model's reference, lineage and weights sha256;
the dataset fingerprint (and its manifest's sha256 when the dataset has one); a digest of the
resolved config; the git commit; every scalar metric (`tuneloop.metric.eval/perplexity`, ...); the
tuneloop versions that trained and registered it; and the MLflow run that trained it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.errors import TuneloopError
from tuneloop.models.store import sha256_file

RUN_FILES = ("config.yaml", "metrics.json", "run.json", "eval.json", "eval.md", "loss.png")
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".onnx",
    ".data",
    ".onnx_data",
)  # .data: ONNX external
METRIC_PREFIX = "tuneloop.metric."
# lineage a derived version (an export) inherits from its parent; metrics and checksums it does not
INHERITED_PREFIXES = ("tuneloop.base_model.", "tuneloop.dataset.", "tuneloop.config.")
INHERITED_KEYS = ("tuneloop.git_commit", "tuneloop.objective", "tuneloop.method", "tuneloop.train_run_id")


@dataclass
class RunFolder:
    path: Path
    model_dir: Path
    run: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return is_adapter_folder(self.model_dir)

    @property
    def config_text(self) -> str | None:
        cfg = self.path / "config.yaml"
        return cfg.read_text() if cfg.is_file() else None


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def read_run(run_dir: str | Path) -> RunFolder:
    """A training run folder as written by `tuneloop train`; names the missing piece if it is not one."""
    path = Path(run_dir).expanduser()
    hint = "pass the folder `tuneloop train` wrote (it holds model/, run.json, config.yaml, metrics.json)"
    if not path.is_dir():
        raise TuneloopError(f"run folder '{run_dir}' does not exist", hint=hint)
    run = _read_json(path / "run.json", hint)
    for key in ("base_model", "dataset"):
        if not isinstance(run.get(key), dict):
            raise TuneloopError(f"{path / 'run.json'}: field '{key}' is missing or not an object", hint=hint)
    model_dir = path / "model"
    if not ((model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file()):
        raise TuneloopError(
            f"{model_dir} holds no model (no config.json or adapter_config.json)",
            hint="the run did not finish; train again or resume it (resume=auto)",
        )
    metrics = _read_json(path / "metrics.json", hint) if (path / "metrics.json").is_file() else {}
    return RunFolder(path.resolve(), model_dir.resolve(), run, metrics)


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise TuneloopError(f"'{path.parent}' is not a training run: {path.name} is missing", hint=hint)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TuneloopError(f"{path} is not valid JSON: {e}", hint=hint) from None
    if not isinstance(data, dict):
        raise TuneloopError(f"{path} should hold a JSON object", hint=hint)
    return data


def weights_sha256(folder: Path, strict: bool = True) -> str:
    """sha256 of a model's weights: the file's own for one file, else a digest of the sorted per-file sums.

    Only weight files count, so re-saving a tokenizer or a README does not make "another" base model.
    `strict=False` digests every file of a folder whose weight format is not one we know.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files and not strict:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    if not files:
        raise TuneloopError(
            f"no weight files (*.safetensors, *.bin) in {folder}", hint="is it a model folder?"
        )
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.name}:{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def run_tags(run: RunFolder, base_sha256: str | None) -> dict[str, str]:
    """Every lineage tag of a training run (values are strings, as MLflow stores them)."""
    info, base, data = run.run, run.run["base_model"], run.run["dataset"]
    # a registry base carries its own tuneloop.* tags in its lineage: its ref says it all, skip the copies
    tags = {f"tuneloop.base_model.{k}": v for k, v in _flat(base).items() if not k.startswith("tuneloop.")}
    tags["tuneloop.base_model.sha256"] = base_sha256
    tags["tuneloop.dataset.fingerprint"] = data.get("fingerprint")
    tags["tuneloop.dataset.train"] = data.get("train")
    tags["tuneloop.dataset.manifest_sha256"] = _dataset_manifest_sha(data.get("train"))
    if run.config_text is not None:
        tags["tuneloop.config.sha256"] = hashlib.sha256(run.config_text.encode()).hexdigest()
    tags.update(
        {
            "tuneloop.objective": info.get("objective"),
            "tuneloop.method": info.get("method"),
            "tuneloop.git_commit": info.get("git_commit"),
            "tuneloop.trained_with": info.get("tuneloop_version"),
            "tuneloop.train_run_id": info.get("mlflow_run_id"),
            "tuneloop.train_tracking_uri": info.get("tracking_uri"),
            "tuneloop.run_dir": str(run.path),
        }
    )
    tags.update(metric_tags(run.metrics))
    return {k: str(v) for k, v in tags.items() if v is not None}


def metric_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """Scalar metrics only: the loss curves stay in the MLflow run and metrics.json."""
    return {
        f"{METRIC_PREFIX}{k}": repr(v) if isinstance(v, float) else str(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def common_tags(kind: str, weights_sha: str, manifest_sha: str) -> dict[str, str]:
    return {
        "tuneloop.kind": kind,
        "tuneloop.weights_sha256": weights_sha,
        "tuneloop.manifest_sha256": manifest_sha,
        "tuneloop.version": __version__,
    }


def inherited(parent_tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in parent_tags.items() if k.startswith(INHERITED_PREFIXES) or k in INHERITED_KEYS}


def _dataset_manifest_sha(train_file: str | None) -> str | None:
    if not train_file:
        return None
    folder = Path(train_file)  # a sharded dataset is recorded as its folder, a file by its path
    manifest = (folder if folder.is_dir() else folder.parent) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out
