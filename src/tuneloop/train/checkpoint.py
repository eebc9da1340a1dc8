"""Resumable checkpoints: trainable weights, optimizer, trainer state and every RNG, written atomically.

    checkpoints/step-00000100/
        trainable.safetensors   only parameters that train (the adapter for LoRA, all for full)
        optimizer.pt            optimizer state (+ grad scaler for fp16)
        state.json              step, micro-batch, lr scale, best val loss, counters, history
        rng-<rank>.pt           python / torch / cuda RNG states of each process
A checkpoint folder appears under its final name only when complete, so `resume=auto` never picks
a half-written one after a kill.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tuneloop.errors import TuneloopError
from tuneloop.train.fsdp import (
    full_state,
    is_sharded,
    load_full_state,
    load_optimizer_full_state,
    optimizer_full_state,
)

PREFIX = "step-"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that train. With FSDP this is a collective: call it on every process."""
    if is_sharded(model):
        return full_state(model, trainable_only=True)
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    if is_sharded(model):
        load_full_state(model, weights)
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def save(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank: int,
    world: int,
    keep: int,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write checkpoint `folder` (rank 0 writes weights; every rank writes its RNG state)."""
    sharded = is_sharded(model)
    weights = trainable_state(model) if sharded or rank == 0 else {}  # collectives when sharded
    opt_state = (
        optimizer_full_state(model, optimizer) if sharded else (optimizer.state_dict() if rank == 0 else {})
    )
    tmp = folder.with_name(folder.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    torch.save(_rng_state(), tmp / f"rng-{rank}.pt")
    if rank == 0:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": opt_state, "scaler": scaler.state_dict() if scaler else None}, tmp / "optimizer.pt"
        )
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _barrier(world)
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        _prune(folder.parent, keep)
    _barrier(world)
    return folder


def latest(root: Path) -> Path | None:
    done = sorted(
        p
        for p in root.glob(f"{PREFIX}*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / "state.json").is_file()
    )
    return done[-1] if done else None


def load(folder: Path, model: Any, optimizer: Any, rank: int, scaler: Any = None) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG; returns the trainer state."""
    if not (folder / "state.json").is_file():
        raise TuneloopError(
            f"'{folder}' is not a complete checkpoint (no state.json)", hint="use resume=auto or never"
        )
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TuneloopError(
            f"checkpoint {folder} does not match this model/method ({len(missing)} unknown tensors, e.g. {missing[0]})",
            hint="resume with the same model, method and lora settings, or set resume=never",
        )
    load_trainable(model, weights)
    opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    if is_sharded(model):
        load_optimizer_full_state(model, optimizer, opt["optimizer"])
    else:
        optimizer.load_state_dict(opt["optimizer"])
    if scaler is not None and opt.get("scaler"):
        scaler.load_state_dict(opt["scaler"])
    rng = folder / f"rng-{rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((folder / "state.json").read_text())


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
