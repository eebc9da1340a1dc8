"""Retrain: a candidate from the current production version on old plus new data, through train.recipe.

A full production version is trained on directly. An adapter version is retrained as a new adapter
on the same registered base (old data + new), so versions stay small and share one serving engine.
`objectives: [sft, dpo]` runs SFT, merges its adapter, and runs DPO on the merged model.
`objectives: auto` (the default) runs SFT, then KTO when the cycle brought thumbs-down answers
without a correction (the thumbs, up and down, as unpaired rows: loop/kto.py), with the desirable
and undesirable weights balanced for the counts as the KTO paper recommends.
A finished run folder is reused on resume; an unfinished one continues from its checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.export.merge import merge_adapter
from tuneloop.loop.config import OBJECTIVES, RetrainSettings
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

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
            raise TuneloopError(
                f"{name}/{prod.version} is an adapter without a tuneloop.base tag",
                hint="register it with `tuneloop registry register` so its base is pinned",
            )
        return base, prod
    return f"{name}/{prod.version}", prod


def _finished(run_dir: Path) -> bool:
    model = run_dir / "model"
    try:
        json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return any(model.glob("*.safetensors"))


def _train(
    settings: RetrainSettings, objective: str, model: str, data: Path, out: Path, val: Path | None = None
) -> Path:
    own = settings.objective_overrides.get(objective, [])  # type: ignore[call-overload]
    for where, o in [("retrain.overrides", o) for o in settings.overrides] + [
        (f"retrain.objective_overrides.{objective}", o) for o in own
    ]:
        if o.split("=", 1)[0].strip() in FORCED:
            raise TuneloopError(
                f"{where}: '{o}' is set by the loop itself",
                hint=f"the loop sets {', '.join(FORCED)}; remove it",
            )
    if _finished(out):
        return out
    forced = [
        f"model={model}",
        f"objective={objective}",
        f"data.path={data}",
        f"output_dir={out}",
        "resume=auto",
        f"name={out.name}",
    ]
    if val is not None:  # the loop's validation rows (absolute), never the train config's val_path
        forced.append(f"data.val_path={val}")
    cfg = load_config(TrainConfig, settings.train_config, [*settings.overrides, *own, *forced])
    if objective == "kto":
        _balance(cfg, data / "train.jsonl")
    if objective == "dpo" and cfg.eval.final:
        cfg.eval.final = False  # the final eval scores SFT answers; the gate evaluates the candidate

    return run(cfg).run_dir


def retrain(
    settings: RetrainSettings, registry: Any, name: str, data: Path, cycle_dir: Path, manifest: dict[str, Any]
) -> Candidate:
    start, _ = start_reference(registry, name)
    runs: list[str] = []
    model = start
    objectives = objectives_for(settings, data, manifest)
    for objective in objectives:
        train_file = data / objective / "train.jsonl"
        if not train_file.read_text(encoding="utf-8").strip():
            raise TuneloopError(
                f"no {objective} training rows in {train_file}",
                hint=f"drop '{objective}' from retrain.objectives, or add retrain.old_data",
            )
        out = cycle_dir / f"run-{objective}"
        run_dir = _train(settings, objective, model, data / objective, out, _validation(data, objective))
        runs.append(str(run_dir))
        if objective != objectives[-1]:
            model = str(_merged(run_dir, cycle_dir / f"merged-{objective}"))
    last = Path(runs[-1])
    return Candidate(last, last / "model", start, runs)


def objectives_for(settings: RetrainSettings, data: Path, manifest: dict[str, Any]) -> list[str]:
    """The objectives this cycle trains, in order. `auto`: sft (the old data plus the new examples; for
    an adapter version it is what keeps production's knowledge), then kto when the new training rows
    hold thumbs-down answers without a correction, which nothing else learns from."""
    if settings.objectives != "auto":
        return list(settings.objectives)
    counts = manifest.get("counts", {})
    chosen = [o for o in ("sft", "kto") if _has_rows(data / o / "train.jsonl")]
    if "kto" in chosen and not counts.get("new_kto_undesirable"):
        chosen.remove("kto")  # upvotes alone: SFT already learns from them
    if not chosen:
        raise TuneloopError(
            f"no training rows in {data}/sft or {data}/kto",
            hint="add retrain.old_data, or wait for feedback (corrections, thumbs)",
        )
    return sorted(chosen, key=OBJECTIVES.index)


def _has_rows(path: Path) -> bool:
    return path.is_file() and bool(path.read_text(encoding="utf-8").strip())


def _balance(cfg: Any, train_file: Path) -> None:
    """Thumbs are rarely balanced (a weak model collects mostly downs, a good one mostly ups). Unless the
    config sets kto.*_weight, weigh the side with more rows down so that desirable_weight * n_D /
    (undesirable_weight * n_U) = 1, the lower end of the KTO paper's recommended [1, 4/3] (its eq. 8)."""
    if cfg.kto.model_fields_set & {"desirable_weight", "undesirable_weight"}:
        return
    lines = train_file.read_text(encoding="utf-8").splitlines()
    labels = [json.loads(line)["label"] for line in lines if line.strip()]
    n_d, n_u = sum(1 for x in labels if x), sum(1 for x in labels if not x)
    if n_d and n_u:
        cfg.kto.desirable_weight = min(1.0, n_u / n_d)
        cfg.kto.undesirable_weight = min(1.0, n_d / n_u)


def _validation(data: Path, objective: str) -> Path:
    """data/validation/OBJECTIVE.jsonl as an absolute path (written by the loop: guards.py); an empty
    file (no validation) for an objective the loop samples none for."""
    path = (data / "validation" / f"{objective}.jsonl").resolve()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return path


def _merged(run_dir: Path, out: Path) -> Path:
    """A full model folder of a run (its adapter merged into the base), for the next objective."""
    model = run_dir / "model"
    if not (model / "adapter_config.json").is_file():
        return model
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out

    merged, tokenizer, _ = merge_adapter(model)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
