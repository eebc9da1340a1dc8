"""What a run was trained under: the config keys that shape training, their hash, and the segments.

A run that is resumed may continue under the same settings (a preempted node, a kill) or, when the
user says so, under changed ones. Each stretch of steps trained under one set of shaping values is
a *segment*; the checkpoint carries the segments so far, so `resume=auto` refuses to continue a
run whose shaping keys changed (naming each one, old -> new) and the run's lineage never claims the
last settings for the whole run.

Shaping keys change the weights a run produces from the same data. Excluded, because they change
only speed, memory or bookkeeping: batch.micro_batch (gradient accumulation sums to the same global
batch; the trainer halves it on OOM by itself), the number of processes and nodes, strategy,
device, compile, liger, fused_loss, padding_free, gradient_checkpointing, checkpoint_layers,
memory_budget_gib, fit_check, num_workers (except below), eval.* (unless early stopping or plateau
act on the validation loss), checkpoint.*, tracking.*, log_every, profile, name, output_dir and resume.

A streamed run (data.mix, or data.streaming=true) partitions the rows over its DataLoader workers
(loader.py): num_workers 0 and 1 give the same order, 2 or more another one each, so there
num_workers >= 2 shapes training (recorded only then, so 0 <-> 1 <-> auto and older checkpoints
compare equal).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.train.config import TrainConfig

ALWAYS = (
    "model",
    "objective",
    "method",
    "data.path",
    "data.max_length",
    "data.overlong",
    "data.packing",
    "data.max_train_examples",
    "optim.lr",
    "optim.weight_decay",
    "optim.betas",
    "optim.schedule",
    "optim.warmup_ratio",
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "optim.max_grad_norm",
    "batch.global_batch",
    "epochs",
    "max_steps",
    "seed",
    "precision",
)
ADAPTER = ("lora.rank", "lora.alpha", "lora.dropout", "lora.targets", "lora.dora")
QLORA = ("qlora.quant_type", "qlora.double_quant")
# the validation loss steers training only through early stopping and the plateau lr cut
VALIDATION = (
    "data.val_path",
    "data.max_val_examples",
    "eval.every",
    "early_stopping.patience",
    "early_stopping.min_delta",
    "plateau.patience",
    "plateau.factor",
)
STREAMING = ("data.mix", "data.streaming", "data.shuffle_buffer")
BY_OBJECTIVE = {
    "dpo": ("dpo.beta",),
    "kto": ("kto.beta", "kto.desirable_weight", "kto.undesirable_weight"),
}
EVERY_KEY = (
    *ALWAYS,
    *ADAPTER,
    *QLORA,
    *VALIDATION,
    "master_weights",
    *STREAMING,
    "num_workers",
    *(k for v in BY_OBJECTIVE.values() for k in v),
)


def shaping_keys(cfg: TrainConfig) -> tuple[str, ...]:
    keys = list(ALWAYS)
    if cfg.method in ("lora", "qlora"):
        keys += ADAPTER
    if cfg.method == "qlora":
        keys += QLORA
    if cfg.method == "full":
        keys.append("master_weights")
    if cfg.early_stopping.patience or cfg.plateau.patience:
        keys += VALIDATION
    keys += BY_OBJECTIVE.get(cfg.objective, ())
    # the streamed order: only when set, so checkpoints from before these keys still compare equal
    # (data.streaming=auto decides from the dataset, which data.path already names)
    if cfg.data.mix or cfg.data.streaming is True:
        keys += STREAMING
        # rows partitioned per worker: another order (0, 1 and auto, which is 0 or 1: the same one)
        if isinstance(cfg.num_workers, int) and cfg.num_workers >= 2:
            keys.append("num_workers")
    return tuple(keys)


def shaping_values(cfg: TrainConfig) -> dict[str, Any]:
    """{dotted key: value} of the keys that shape training, as JSON values."""
    dumped = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in shaping_keys(cfg):
        node: Any = dumped
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def config_hash(values: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def check_allowed_keys(allowed: list[str]) -> None:
    """resume.allow_changes names shaping keys; a typo would silently allow nothing."""
    for key in allowed:
        if key not in EVERY_KEY:
            close = difflib.get_close_matches(key, EVERY_KEY, n=1, cutoff=0.6)
            raise TuneloopError(
                f"resume.allow_changes: '{key}' is not a key that shapes training"
                + (f" (did you mean '{close[0]}'?)" if close else ""),
                hint="keys that shape training: " + ", ".join(EVERY_KEY),
            )


@dataclass
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Keys whose value differs; a key present on one side only (another method or objective) counts."""
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append(Change(key, None if a is missing else a, None if b is missing else b))
    return out


def new_segment(cfg: TrainConfig, from_step: int, allowed: list[Change] | None = None) -> dict[str, Any]:
    values = shaping_values(cfg)
    segment: dict[str, Any] = {
        "from_step": from_step,
        "to_step": from_step,
        "config_hash": config_hash(values),
        "config": values,
        "starts": 1,
        "train_seconds": 0.0,
        "tokens": 0,
    }
    if allowed:
        segment["changed"] = {c.key: {"old": c.old, "new": c.new} for c in allowed}
    return segment


def continue_segments(
    cfg: TrainConfig, segments: list[dict[str, Any]], step: int, checkpoint: str, explicit: bool
) -> list[dict[str, Any]]:
    """The segments to train on with after resuming at `step` from `checkpoint`: the last one
    continued when nothing that shapes training changed, a new one when the user allowed the changes;
    an error naming every change otherwise."""
    if not segments:  # a checkpoint from before segments were recorded: nothing to compare with
        return [new_segment(cfg, step)]
    last = segments[-1]
    found = changes(last["config"], shaping_values(cfg))
    if not found:
        segments = [dict(s) for s in segments]
        segments[-1]["starts"] = segments[-1].get("starts", 1) + 1
        return segments
    not_allowed = [c for c in found if c.key not in cfg.resume.allow_changes]
    if not_allowed or not explicit:
        listed = "\n  ".join(str(c) for c in found)
        keys = ",".join(c.key for c in found)
        raise TuneloopError(
            f"the run's checkpoint {checkpoint} (step {step}) was trained under other settings; "
            f"continuing would change the run behind your back:\n  {listed}",
            hint=f"start over with resume=never (or another output_dir), or continue deliberately with "
            f"resume.checkpoint={checkpoint} resume.allow_changes=[{keys}]",
        )
    return [*segments, new_segment(cfg, step, found)]


def summary(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments without the full config, for places with little room (an MLflow tag)."""
    return [{k: v for k, v in s.items() if k != "config"} for s in segments]
