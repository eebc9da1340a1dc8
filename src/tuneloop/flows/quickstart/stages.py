"""The quickstart: from the bundled example corpus to a fine-tuned, registered, served model.

One function per stage; `tuneloop quickstart` (cli/quickstart.py) runs them in order and prints:

    pull_model -> prepare_docs -> evaluate_stage("base") -> finetune -> evaluate_stage("tuned")
    -> register -> start_server + ask_server (or answer_directly with --no-serve)

Every stage that makes something records it in WORKDIR/state.json (flows/resume.py) with a key
of its inputs, and on a rerun is skipped only when that key is unchanged and its outputs still check
out: dataset checksums, the adapter's digest, eval.json readable, the registry version still there
with the same weights. Anything else (a half-finished run folder, a deleted output) is redone.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config import load_config
from tuneloop.data.config import DataConfig
from tuneloop.data.run import prepare
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.harness import EvalReport, Sample, evaluate
from tuneloop.evaluation.metrics import mean_scores
from tuneloop.evaluation.report import write_reports
from tuneloop.evaluation.rows import read_rows
from tuneloop.flows.quickstart.settings import Settings, Workdir
from tuneloop.flows.resume import file_digest, key_of, tree_digest
from tuneloop.loop.answers import load_for_answers, quiet
from tuneloop.models.catalog import BUILTIN
from tuneloop.models.loading import stream_chat
from tuneloop.models.pull import pull
from tuneloop.models.resolve import resolve_model
from tuneloop.registry import Registry
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

Progress = Callable[[int, int], None]  # (done, total)


# ---------------------------------------------------------------------------------------------- model


@dataclass
class ModelResult:
    path: Path
    action: str  # pulled | present | repaired | found
    key: str  # changes when the weights do


def pull_model(
    s: Settings, step: Callable[[str], None] = lambda _: None, progress: bool = True
) -> ModelResult:
    """The base model: a built-in one is pulled (idempotent, checksum-verified); else resolved."""

    if s.model in BUILTIN:
        result = pull(s.model, step=step, progress=progress)
        path, action = result.path, result.action
    else:
        resolved = resolve_model(s.model, pull=True)
        if resolved.is_adapter:
            raise TuneloopError(f"--model '{s.model}' is an adapter", hint="start from a full model")
        path, action = resolved.path, "found"
    return ModelResult(path, action, tree_digest(path, contents=False))


# ----------------------------------------------------------------------------------------------- data


@dataclass
class DataResult:
    out: Path
    manifest: dict[str, Any]
    reused: bool


def prepare_docs(s: Settings, wd: Workdir, model: ModelResult, progress: bool = True) -> DataResult:
    """`tuneloop data prepare` of the corpus' docs/ into a pretraining dataset (with its manifest)."""

    cfg = load_config(DataConfig, {"kind": "pretrain", "tokenizer": str(model.path)})
    key = key_of(tree_digest(s.docs, contents=True), model.key, cfg.model_dump(mode="json"))
    record = None if s.force else wd.state.record("data", key)
    if record and (manifest := _dataset_ok(wd.data, record.get("fingerprint"))):
        return DataResult(wd.data, manifest, True)
    wd.state.forget("data")
    data_log = logging.getLogger("tuneloop.data")
    if not data_log.handlers:  # skipped inputs are in the manifest and the summary, not the log
        data_log.addHandler(logging.NullHandler())
    manifest = prepare([str(s.docs)], wd.data, cfg, workers=1, progress=progress)
    wd.state.done("data", key, fingerprint=manifest["fingerprint"])
    return DataResult(wd.data, manifest, False)


def _dataset_ok(folder: Path, fingerprint: str | None) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        outputs = manifest["outputs"]
        files_ok = all(
            file_digest(folder / name) == meta["sha256"]
            for name, meta in outputs.items()
            if name.endswith(".jsonl")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if files_ok and manifest.get("fingerprint") == fingerprint else None


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    report: Any  # tuneloop.evaluation.harness.EvalReport
    out: Path
    precision: str
    reused: bool


def evaluate_stage(
    s: Settings,
    wd: Workdir,
    which: str,
    ref: str | Path,
    key_parts: list[Any],
    progress: Progress | None = None,
) -> EvalResult:
    """Answer the held-out questions with `ref` (a model or adapter folder); eval.json + eval.md."""
    out = wd.eval(which)
    key = key_of(*key_parts, file_digest(s.heldout), s.eval_samples, s.eval_max_new_tokens)
    record = None if s.force else wd.state.record(f"eval_{which}", key)
    if record and (report := _read_report(out / "eval.json")) is not None:
        return EvalResult(report, out, record.get("precision", ""), True)
    wd.state.forget(f"eval_{which}")
    report, precision = evaluate_in_chunks(s, ref, progress)

    write_reports(out, report)
    wd.state.done(f"eval_{which}", key, precision=precision)
    return EvalResult(report, out, precision, False)


def evaluate_in_chunks(s: Settings, ref: str | Path, progress: Progress | None) -> tuple[Any, str]:
    """The harness' `evaluate`, one batch at a time (so a progress bar moves), merged into one report."""

    _, kind = read_rows(s.heldout)  # a bad line is an error naming file and line
    if kind != "sft":
        raise TuneloopError(f"{s.heldout} holds text rows", hint="held-out rows need `messages` and `answer`")
    lines = s.heldout.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()][: s.eval_samples]
    model, tokenizer, precision = load_for_answers(ref, s.device)
    parts, size = [], s.eval_batch_size
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        parts.append(
            evaluate(
                str(ref),
                chunk,
                max_new_tokens=s.eval_max_new_tokens,
                batch_size=size,
                model=model,
                tokenizer=tokenizer,
            )
        )
        if progress:
            progress(start + len(chunk), len(records))
    return merge_reports(parts, str(ref), str(s.heldout)), precision


def merge_reports(parts: list[Any], model: str, data: str) -> Any:
    """One report from reports on consecutive slices: token-weighted perplexity, per-sample means."""

    tokens = sum(p.metrics["scored_tokens"] for p in parts)
    nll = sum(p.metrics["nll"] * p.metrics["scored_tokens"] for p in parts) / tokens
    samples = [x for p in parts for x in p.samples]
    metrics = {"perplexity": math.exp(nll), "nll": nll, "scored_tokens": tokens}
    metrics.update(mean_scores(x.scores for x in samples))
    timing = {k: sum(p.timing.get(k, 0.0) for p in parts) for k in parts[0].timing}
    return EvalReport(
        model,
        data,
        parts[0].kind,
        sum(p.n for p in parts),
        metrics,
        samples,
        timing,
        sum(p.truncated for p in parts),
        parts[0].max_length,
    )


def _read_report(path: Path) -> Any:

    try:
        d = json.loads(path.read_text(encoding="utf-8"))["model"]
        return EvalReport(**{**d, "samples": [Sample(**x) for x in d["samples"]]})
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    weights_key: str  # digest of the trained weights: later stages key on it
    metrics: dict[str, Any]
    config: Any  # TrainConfig
    reused: bool


def train_config(s: Settings, wd: Workdir) -> Any:
    """The quickstart's TrainConfig: its YAML, the user's overrides, then the keys it sets itself."""

    if not s.train_config.is_file():
        raise TuneloopError(f"training config '{s.train_config}' does not exist", hint="check --config")
    forced = [
        f"model={s.model}",
        f"data.path={s.train_file}",
        f"data.val_path={s.heldout}",
        f"output_dir={wd.run}",
        "resume=never",
        "eval.final=false",
    ]
    return load_config(TrainConfig, s.train_config, [*s.overrides, *forced])


def finetune(
    s: Settings, wd: Workdir, model: ModelResult, progress: Callable[[int, int, float], None] | None = None
) -> TrainResult:
    """LoRA fine-tune on the corpus' qa/train.jsonl into WORKDIR/run (a half-finished run is redone)."""
    cfg = train_config(s, wd)
    key = key_of(cfg.to_yaml(), model.key, file_digest(s.train_file), file_digest(s.heldout))
    record = None if s.force else wd.state.record("train", key)
    if record and (weights := _run_weights(wd.run)) == record.get("weights"):
        metrics = json.loads((wd.run / "metrics.json").read_text())
        return TrainResult(wd.run, wd.run / "model", weights, metrics, cfg, True)
    wd.state.forget("train", "eval_tuned", "register")
    shutil.rmtree(wd.run, ignore_errors=True)  # whatever a stopped run left behind

    with _train_progress(progress), quiet():
        result = run(cfg)
    weights = _run_weights(wd.run)
    if weights is None:
        raise TuneloopError(f"training finished but {wd.run} lacks its outputs", hint="rerun with --force")
    wd.state.done("train", key, weights=weights)
    return TrainResult(result.run_dir, result.model_dir, weights, result.metrics, cfg, False)


def _run_weights(run_dir: Path) -> str | None:
    """Digest of a finished run's weights; None when anything a finished run writes is missing."""
    model = run_dir / "model"
    weights = sorted(model.glob("*.safetensors")) if model.is_dir() else []
    configs = [model / "adapter_config.json", model / "config.json"]
    try:
        json.loads((run_dir / "run.json").read_text())
        json.loads((run_dir / "metrics.json").read_text())
        if not weights or not any(c.is_file() for c in configs):
            return None
    except (OSError, ValueError):
        return None
    return key_of(*(file_digest(w) for w in weights))


class _StepHandler(logging.Handler):
    """Turns the trainer's "step %d/%d loss %.4f …" log records into progress callbacks."""

    def __init__(self, progress: Callable[[int, int, float], None]):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(record.msg, str) and record.msg.startswith("step %d/%d") and isinstance(args, tuple):
            self.progress(int(args[0]), int(args[1]), float(args[2]))


@contextmanager
def _train_progress(progress: Callable[[int, int, float], None] | None) -> Iterator[None]:
    logger = logging.getLogger("tuneloop.train")
    handler, level, propagate = _StepHandler(progress or (lambda *_: None)), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the bar shows the steps; warnings still reach our handler only
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# ------------------------------------------------------------------------------------------ register


@dataclass
class RegisterResult:
    name: str
    version: int
    base: str | None  # registry reference of the base an adapter is pinned to
    production: int | None  # the version `production` points at now
    reused: bool

    @property
    def ref(self) -> str:
        return f"{self.name}@production"


def register(s: Settings, wd: Workdir, trained: TrainResult) -> RegisterResult:
    """The run as a registry version (an adapter also pins its base), aliased `production`."""

    reg = Registry()
    key = key_of(trained.weights_key, s.name, reg.tracking_uri)
    record = None if s.force else wd.state.record("register", key)
    if record and _still_registered(reg, s.name, record):
        production = _alias(reg, s.name) or _promote(reg, s.name, int(record["version"]))
        return RegisterResult(s.name, int(record["version"]), record.get("base"), production, True)
    wd.state.forget("register")
    info = reg.register_run(trained.run_dir, s.name, "quickstart: LoRA SFT on the Nimbus Labs QA set")
    _promote(reg, s.name, info.version)
    base = info.tags.get("tuneloop.base")
    wd.state.done(
        "register", key, version=info.version, weights=info.tags["tuneloop.weights_sha256"], base=base
    )
    return RegisterResult(s.name, info.version, base, info.version, False)


def _still_registered(reg: Any, name: str, record: dict[str, Any]) -> bool:
    try:
        mv = reg.version(f"{name}/{int(record['version'])}")
    except (TuneloopError, KeyError, ValueError, TypeError):
        return False
    return dict(mv.tags).get("tuneloop.weights_sha256") == record.get("weights")


def _alias(reg: Any, name: str) -> int | None:
    found = dict(reg.model(name).aliases or {}).get("production")
    return int(found) if found is not None else None


def _promote(reg: Any, name: str, version: int) -> int:
    reg.promote(name, version, "production")
    return version


# -------------------------------------------------------------------------------------------- answer


def answer_directly(ref: str, question: str, device: str = "auto", max_new_tokens: int = 64) -> Iterator[str]:
    """Stream the answer of `ref` (a registry reference works, adapters included) without a server."""

    model, tokenizer, _ = load_for_answers(ref, device)
    messages = [{"role": "user", "content": question}]
    yield from stream_chat(model, tokenizer, messages, max_new_tokens=max_new_tokens)
