"""The training recipe: a short readable script of setup steps around `Trainer.fit`.

model reference -> tokenizer -> examples -> model (full / LoRA / QLoRA) -> tracking -> resume ->
fit -> best weights -> run folder (weights, tokenizer, config, metrics, loss.png, eval) -> MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as tdist
from huggingface_hub import save_torch_state_dict

from tuneloop import __version__, paths
from tuneloop.data.layout import Split
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.harness import evaluate
from tuneloop.evaluation.report import write_reports
from tuneloop.models.formats import DESCRIPTION, require_complete, require_format
from tuneloop.models.loading import load_tokenizer, pick_device
from tuneloop.models.resolve import ResolvedModel, resolve_model
from tuneloop.models.store import sha256_file
from tuneloop.train import checkpoint, distributed, fsdp, segments, sources
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import Prepared, pack, tokenize, tokenize_parallel
from tuneloop.train.distributed import Dist
from tuneloop.train.loader import LoadedMixture
from tuneloop.train.mixture import Mixture
from tuneloop.train.model_setup import (
    Precision,
    check_fit,
    checkpointing_layers,
    load_for_training,
    pick_precision,
    trainable_parameters,
)
from tuneloop.train.plots import loss_plot
from tuneloop.train.profiling import StepProfiler
from tuneloop.train.sources import TrainData
from tuneloop.train.tracking import Tracker
from tuneloop.train.trainer import Trainer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("tuneloop.train")


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    mlflow_run_id: str | None
    tracking_uri: str | None


def run(cfg: TrainConfig) -> RunResult:
    # The data first: every row's structure is checked in seconds, before a model is resolved
    # (perhaps pulled) and loaded; only tokenizer-dependent checks (lengths, labels) come later.
    data = read_data(cfg)
    run_dir = Path(cfg.output_dir).expanduser() if cfg.output_dir else paths.runs_dir() / cfg.run_name()
    paths.check_writable_dir(run_dir, "output_dir" if cfg.output_dir else "the run folder")
    resume_from = _resume_folder(cfg, run_dir)
    lineage = _lineage(cfg, resume_from)  # a changed setting stops here, in seconds, before any model loads
    device = pick_device(cfg.device)
    d = distributed.init(device)
    if device.startswith("cuda") and d.world > 1:
        device = f"cuda:{d.local_rank}"
    precision = pick_precision(cfg.precision, device)
    resolved = _resolve_once(cfg.model, d)
    _check_base(cfg, resolved.path)
    setup = _Setup(
        cfg,
        d,
        device,
        precision,
        resolved,
        run_dir,
        resume_from,
        lineage,
        data,
    )
    with run_folder(run_dir, main=d.main):
        return _train(setup)


def read_data(cfg: TrainConfig) -> TrainData:
    """The datasets, every row's structure checked (a streamed dataset's first rows; no tokenizer needed)."""
    return sources.read(cfg)


@dataclass
class _Setup:
    """What `run` checked and decided before the run folder exists."""

    cfg: TrainConfig
    dist: Dist
    device: str
    precision: Precision
    resolved: ResolvedModel
    run_dir: Path
    resume_from: Path | None
    segments: list[dict[str, Any]]
    data: TrainData


def _train(setup: _Setup) -> RunResult:
    cfg, d, device, precision, resolved = setup.cfg, setup.dist, setup.device, setup.precision, setup.resolved
    run_dir, data, val_file = setup.run_dir, setup.data, setup.data.val_file
    tokenizer = load_tokenizer(resolved.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = sources.open_stream(cfg, data, tokenizer, d, device) if data.streamed else None
    train = _examples(cfg, data.rows, tokenizer, packing=cfg.data.packing) if stream is None else Prepared([])
    val = _examples(cfg, data.val_rows, tokenizer, packing=False) if data.val_rows else Prepared([])
    if stream is None and len(train.examples) == 0:
        raise TuneloopError(
            f"no training examples left in {data.train_file}", hint=f"counts: {dict(train.counts)}"
        )
    if cfg.eval.every and not val.examples and d.main:
        log.warning("eval.every is set but there is no validation data: no validation loss will be computed")

    ckpt_layers = checkpointing_layers(cfg, str(resolved.path), device, precision, d.world)
    check_fit(
        cfg, str(resolved.path), device, precision, d.world, ckpt_layers
    )  # before loading: fail in seconds
    torch.manual_seed(cfg.seed)  # same LoRA init on every process
    model = load_for_training(cfg, str(resolved.path), device, precision, ckpt_layers)
    if cfg.strategy == "fsdp" and d.world > 1:
        model = fsdp.shard_model(model, precision.autocast, device)
    model.train()
    trainable, total = trainable_parameters(model)
    tracker = Tracker(cfg, run_dir, enabled=d.main)
    state_hint = _peek_state(setup.resume_from)
    tracker.start(resume_run_id=state_hint.get("mlflow_run_id"), segments=setup.segments)
    trainer = Trainer(
        cfg,
        model,
        stream if stream is not None else train.examples,
        val.examples,
        pad_id=pad_id,
        device=device,
        precision=precision,
        dist=d,
        run_dir=run_dir,
        tracker=tracker,
    )
    if setup.resume_from is not None:
        trainer.resume(setup.resume_from)
    trainer.state.segments = setup.segments
    facts = {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples": stream.estimated_examples if stream else len(train.examples),
        "val_examples": len(val.examples),
        "train_tokens": None if stream else train.tokens,  # streamed: not known before training
        "streaming": stream is not None,
        **_mix_params(data),
        "total_steps": trainer.plan.total_steps,
        "world_size": d.world,
        "device": device,
        "precision": precision.name,
        "checkpointed_layers": ckpt_layers,
        **{f"data.{k}": v for k, v in train.counts.items()},
    }
    if setup.resume_from is None:
        tracker.log_params({f"run.{k}": v for k, v in facts.items()})
    if d.main:
        log.info("training %s (%s, %s): %s", cfg.model, cfg.objective, cfg.method, facts)
    try:
        with _profiler(cfg, run_dir) as prof:
            trainer.profiler = prof
            state = trainer.fit()
    except KeyboardInterrupt:
        if cfg.checkpoint.every:
            trainer.save_checkpoint()  # Ctrl-C keeps the progress; resume=auto continues from here
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if isinstance(stream, LoadedMixture):
            stream.close()  # its worker processes; what it consumed stays for the metrics
    restored = trainer.restore_best()
    model_dir = run_dir / "model"
    metrics: dict[str, Any] = {}
    full = _gather_if_sharded(model)  # a collective: every process takes part
    streamed = _stream_metrics(stream, d, device) if stream is not None else {}  # a collective too
    if d.main:
        metrics = _write_outputs(
            cfg, trainer, tokenizer, resolved, data, run_dir, model_dir, facts, restored, full
        )
        metrics.update(streamed)
        metrics.update(_final_eval(cfg, model_dir, val_file, run_dir, tracker))
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        for name in (
            "loss.png",
            "config.yaml",
            "metrics.json",
            "run.json",
            "eval.json",
            "eval.md",
            "profile",
        ):
            tracker.artifact(run_dir / name)
        if cfg.method != "full":
            tracker.artifact(model_dir, "adapter")
        tracker.log(  # the summary metrics.json already holds (state.throughput())
            {f"run/{k}": float(metrics[k]) for k in ("tokens_per_s", "tokens_per_s_overall")}, state.step
        )
        tracker.set_tags({"tuneloop.stopped_early": state.stopped_early})
        for n, share in enumerate(streamed.get("data_mix_token_share", {}).values()):
            tracker.log({f"data/mix_token_share_{n}": share}, step=state.step)
        tracker.record_segments(state.segments)
    tracker.finish()
    distributed.shutdown(d)
    return RunResult(run_dir, model_dir, metrics, tracker.run_id, tracker.tracking_uri)


def _check_base(cfg: TrainConfig, path: Path) -> None:
    """Train from a model whose weights can train: exports (ONNX, int4) and adapters fail by name."""
    fmt = require_format(path, cfg.model, "train")
    require_complete(path, cfg.model)
    if fmt == "quantized" and cfg.method != "lora":
        raise TuneloopError(
            f"'{cfg.model}' is {DESCRIPTION['quantized']}: method={cfg.method} cannot train its weights",
            hint="use method=lora (LoRA on the quantized weights), or train the full-precision folder "
            "it was exported from",
        )


@contextmanager
def run_folder(run_dir: Path, main: bool = True) -> Iterator[None]:
    """The run folder, for the block that trains into it. When the block fails, nothing misleading
    stays: a folder this run created and saved nothing of value into (no checkpoint, no model) is
    removed; otherwise run.json says the run failed (or was interrupted), why, and its last checkpoint,
    so neither a user, `registry register` nor the next run with this name takes it for a finished one."""
    created = not run_dir.exists()
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException as e:
        if main:
            _after_failure(run_dir, created, started, e)
        raise


def _after_failure(run_dir: Path, created: bool, started: float, error: BaseException) -> None:
    last = checkpoint.latest(run_dir / "checkpoints")
    if created and last is None and not (run_dir / "model").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s: the run failed before it saved anything", run_dir)
        return
    if not created and not any(p.stat().st_mtime >= started for p in run_dir.rglob("*")):
        return  # an earlier run's folder, untouched by this attempt: it stays as it was
    run_json = run_dir / "run.json"
    try:
        info = json.loads(run_json.read_text()) if run_json.is_file() else {}
    except (OSError, ValueError):
        info = {}
    message = error.message if isinstance(error, TuneloopError) else f"{type(error).__name__}: {error}"
    info = {
        **(info if isinstance(info, dict) else {}),
        "status": "interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
        "error": message,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(last) if last else None,
    }
    tmp = run_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(run_json)


def _save_gathered(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    model_dir: Path,
    cfg: TrainConfig,
    dtype: torch.dtype,
) -> None:
    """Write an HF folder from a gathered state dict (save_pretrained cannot read FSDP's sharded module)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if cfg.method == "full":
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: stored once, as the embedding
        save_torch_state_dict(state, model_dir)
        model.config.save_pretrained(model_dir)
        model.generation_config.save_pretrained(model_dir)
        return
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(model, state_dict=state)
    save_torch_state_dict(adapter, model_dir, filename_pattern="adapter_model{suffix}.safetensors")
    model.peft_config["default"].save_pretrained(model_dir)


def _gather_if_sharded(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    return fsdp.full_state(model, trainable_only=False) if fsdp.is_sharded(model) else None


def _resolve_once(ref: str, d: Dist) -> ResolvedModel:
    """Process 0 pulls a built-in model if needed; the others wait and then find it in the store."""
    if d.world > 1 and not d.main:
        tdist.barrier()
        return resolve_model(ref, pull=False)
    resolved = resolve_model(ref, pull=True)
    if d.world > 1:
        tdist.barrier()
    return resolved


def _resume_folder(cfg: TrainConfig, run_dir: Path) -> Path | None:
    where = cfg.resume.checkpoint
    if where == "never":
        return None
    if where == "auto":
        return checkpoint.latest(run_dir / "checkpoints")
    folder = Path(where).expanduser()
    if not (folder / "state.json").is_file():
        raise TuneloopError(
            f"resume.checkpoint='{where}' is not a complete checkpoint folder (no state.json)",
            hint=f"use resume=auto, never, or one of {run_dir / 'checkpoints'}/step-*",
        )
    return folder


def _lineage(cfg: TrainConfig, resume_from: Path | None) -> list[dict[str, Any]]:
    """The run's segments: one new one, or the checkpoint's continued (refused when a key that shapes
    training changed without resume.allow_changes naming it)."""
    segments.check_allowed_keys(cfg.resume.allow_changes)
    if resume_from is None:
        return [segments.new_segment(cfg, 0)]
    state = _peek_state(resume_from)
    explicit = cfg.resume.checkpoint not in ("auto", "never")
    return segments.continue_segments(
        cfg, state.get("segments") or [], int(state.get("step", 0)), str(resume_from), explicit
    )


def _peek_state(folder: Path | None) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text()) if folder else {}


def _examples(
    cfg: TrainConfig, rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, packing: bool
) -> Prepared:
    workers = cfg.num_workers if isinstance(cfg.num_workers, int) else 0  # auto: in this process
    if workers > 1 and len(rows) >= 64 * workers:  # small sets: process start-up costs more
        prepared = tokenize_parallel(
            rows,
            tokenizer.name_or_path,
            cfg.objective,
            cfg.data.max_length,
            cfg.data.overlong,
            workers,
        )
    else:
        prepared = tokenize(rows, tokenizer, cfg.objective, cfg.data.max_length, cfg.data.overlong)
    prepared.counts["rows"] = len(rows)
    if packing:
        before = len(prepared.examples)
        prepared.examples = pack(prepared.examples, cfg.data.max_length)
        prepared.counts["packed_sequences"] = len(prepared.examples)
        log.info(
            "packed %d examples into %d sequences of <= %d tokens",
            before,
            len(prepared.examples),
            cfg.data.max_length,
        )
    return prepared


def _mix_params(data: TrainData) -> dict[str, Any]:
    """data.mix's normalized weights, as run facts (MLflow params `run.mix.<n>.path/weight`)."""
    if not data.mixed:
        return {}
    out: dict[str, Any] = {}
    for n, e in enumerate(data.entries):
        out[f"mix.{n}.path"] = e.name
        out[f"mix.{n}.weight"] = round(e.weight, 6)
    return out


def _stream_metrics(stream: Mixture | LoadedMixture, d: Dist, device: str) -> dict[str, Any]:
    """What a streamed run knows only at its end: each dataset's share of the input tokens drawn
    (every process's draws) and tokenize's counts over the windows this process read."""
    tokens = distributed.sum_scalars([float(t) for t in stream.tokens], d, device)
    total = max(1.0, sum(tokens))
    shares = {e.name: round(t / total, 6) for e, t in zip(stream.entries, tokens, strict=True)}
    return {"data_mix_token_share": shares, **{f"data.{k}": v for k, v in stream.counts().items()}}


def _profiler(cfg: TrainConfig, run_dir: Path) -> contextlib.AbstractContextManager:
    if not cfg.profile:
        return contextlib.nullcontext()
    return StepProfiler(run_dir / "profile")


def _write_outputs(
    cfg: TrainConfig,
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    resolved: ResolvedModel,
    data: TrainData,
    run_dir: Path,
    model_dir: Path,
    facts: dict[str, Any],
    restored: bool,
    full_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    state = trainer.state
    model = trainer.model
    dtype = _save_dtype(resolved.path)  # fp32 master weights go back to the model's own dtype
    if full_state is not None:  # FSDP: the gathered full state dict, not the sharded module's
        _save_gathered(model, full_state, model_dir, cfg, dtype)
    else:
        if cfg.method == "full":
            model.to(dtype=dtype)
        model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (run_dir / "config.yaml").write_text(_config_header(state.segments) + cfg.to_yaml())
    loss_plot(state.train_loss, state.val_loss, run_dir / "loss.png", title=f"{cfg.run_name()}")
    run_info = {
        "status": "completed",
        "tuneloop_version": __version__,
        "base_model": {"reference": cfg.model, "path": str(resolved.path), **resolved.lineage},
        "dataset": data.lineage(dataset_fingerprint),
        "objective": cfg.objective,
        "method": cfg.method,
        "git_commit": _git_commit(),
        "mlflow_run_id": trainer.tracker.run_id,
        "tracking_uri": trainer.tracker.tracking_uri,
        "segments": state.segments,
    }
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
    return {
        **facts,
        "steps": state.step,
        "final_train_loss": state.train_loss[-1][1] if state.train_loss else None,
        "best_val_loss": state.best_val,
        "val_loss": state.val_loss,
        "train_loss": state.train_loss,
        "grad_norm": state.grad_norm,
        "step_seconds": state.step_seconds,
        "stopped_early": state.stopped_early,
        "restored_best": restored,
        "lr_cuts": state.lr_cuts,
        "oom_backoffs": state.oom_backoffs,
        "train_seconds": state.train_seconds,  # every segment's steps, not only this start's
        **state.throughput(),
        "segments": segments.summary(state.segments),
    }


def _config_header(segs: list[dict[str, Any]]) -> str:
    """config.yaml is the last segment's config; say so when earlier steps ran under other values."""
    if len(segs) < 2:
        return ""
    lines = [f"# trained in {len(segs)} segments under different settings; this file is the last one's."]
    for s in segs[1:]:
        changed = ", ".join(f"{k}: {v['old']} -> {v['new']}" for k, v in s.get("changed", {}).items())
        lines.append(f"# from step {s['from_step']}: {changed}")
    lines.append("# run.json `segments` holds each segment's settings.")
    return "\n".join(lines) + "\n"


def _final_eval(
    cfg: TrainConfig, model_dir: Path, val_file: Path | None, run_dir: Path, tracker: Tracker
) -> dict[str, Any]:
    if not (cfg.eval.final and val_file and cfg.objective == "sft"):
        return {}
    report = evaluate(
        str(model_dir),
        str(val_file),
        max_samples=cfg.eval.max_samples,
        max_new_tokens=cfg.eval.max_new_tokens,
    )
    write_reports(run_dir, report)
    metrics = {f"eval/{k}": v for k, v in report.metrics.items() if isinstance(v, (int, float))}
    tracker.log(metrics, step=0)
    return metrics


def dataset_fingerprint(train_file: Path | Split) -> str:
    if isinstance(train_file, Split):  # shards of a prepared dataset: its manifest's fingerprint
        return train_file.fingerprint or "unknown"
    manifest = train_file.parent / "manifest.json"
    if manifest.is_file():
        fp = json.loads(manifest.read_text()).get("fingerprint")
        if fp:
            return str(fp)
    return "sha256:" + sha256_file(train_file)  # streamed: a dataset may not fit in memory


def _save_dtype(path: Path) -> torch.dtype:
    cfg = json.loads((Path(path) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name), torch.float32)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
