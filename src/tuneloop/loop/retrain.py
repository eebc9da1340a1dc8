"""Retrain: a candidate from the current production version on old plus new data, through train.recipe.

A full production version is trained on directly. An adapter version is retrained as a new adapter
on the same registered base (old data + new), so versions stay small and share one serving engine.
`objectives: [sft, dpo]` runs SFT, merges its adapter, and runs DPO on the merged model.
A finished run folder is reused on resume; an unfinished one continues from its checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.loop.config import RetrainSettings

FORCED = ("model", "objective", "data.path", "data.val_path", "output_dir", "resume", "name")


@dataclass
class Candidate:
    run_dir: Path
    model_dir: Path
    start: str  # the registry reference training started from
    runs: list[str]  # every run folder, in order


def start_reference(registry: Any, name: str) -> tuple[str, Any]:
    """(reference to train from, the production ModelVersion)."""
    prod = registry.version(f"{name}@production")
    tags = dict(prod.tags)
    if tags.get("tuneloop.kind") == "adapter":
        base = tags.get("tuneloop.base")
        if not base:
            raise TuneloopError(f"{name}/{prod.version} is an adapter without a tuneloop.base tag",
                                hint="register it with `tuneloop registry register` so its base is pinned")  # fmt: skip
        return base, prod
    return f"{name}/{prod.version}", prod


def _finished(run_dir: Path) -> bool:
    model = run_dir / "model"
    try:
        json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return any(model.glob("*.safetensors"))


def _train(settings: RetrainSettings, objective: str, model: str, data: Path, out: Path) -> Path:
    from tuneloop.config import load_config
    from tuneloop.train.config import TrainConfig

    for o in settings.overrides:
        if o.split("=", 1)[0].strip() in FORCED:
            raise TuneloopError(f"retrain.overrides: '{o}' is set by the loop itself",
                                hint=f"the loop sets {', '.join(FORCED)}; remove it")  # fmt: skip
    if _finished(out):
        return out
    forced = [f"model={model}", f"objective={objective}", f"data.path={data}", f"output_dir={out}",
              "resume=auto", f"name={out.name}"]  # fmt: skip
    cfg = load_config(TrainConfig, settings.train_config, [*settings.overrides, *forced])
    if objective == "dpo" and cfg.eval.final:
        cfg.eval.final = False  # the final eval scores SFT answers; the gate evaluates the candidate
    from tuneloop.train.recipe import run

    return run(cfg).run_dir


def retrain(settings: RetrainSettings, registry: Any, name: str, data: Path, cycle_dir: Path,
            manifest: dict[str, Any]) -> Candidate:  # fmt: skip
    start, _ = start_reference(registry, name)
    runs: list[str] = []
    model = start
    for objective in settings.objectives:
        train_file = data / objective / "train.jsonl"
        if not train_file.read_text(encoding="utf-8").strip():
            raise TuneloopError(f"no {objective} training rows in {train_file}",
                                hint=f"drop '{objective}' from retrain.objectives, or add retrain.old_data")  # fmt: skip
        out = cycle_dir / f"run-{objective}"
        run_dir = _train(settings, objective, model, data / objective, out)
        runs.append(str(run_dir))
        if objective != settings.objectives[-1]:
            model = str(_merged(run_dir, cycle_dir / f"merged-{objective}"))
    last = Path(runs[-1])
    return Candidate(last, last / "model", start, runs)


def _merged(run_dir: Path, out: Path) -> Path:
    """A full model folder of a run (its adapter merged into the base), for the next objective."""
    model = run_dir / "model"
    if not (model / "adapter_config.json").is_file():
        return model
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    from tuneloop.optimize.merge import merge_adapter

    merged, tokenizer, _ = merge_adapter(model)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
