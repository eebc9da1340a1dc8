"""`run_export`: check the request, measure the source, apply the steps, measure the result, gate, register.

Order is fixed: merge (adapter into base) → prune → quantize, ONNX or GGUF. Everything that can be
refused (bad sparsity, 2:4 on a CPU, an adapter without --merge, a GGUF of a non-Llama model) is
refused before loading. --gguf merges an adapter without being asked: a GGUF is one
self-contained file, which is what a llama.cpp/Ollama user expects from an adapter.

The export is built, measured and reported in a hidden sibling folder that is renamed to --out
at the end, so an interrupted export never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError
from tuneloop.export import gguf as gguf_export
from tuneloop.export import prune as pruning
from tuneloop.export.measure import Measurement, Workload, measure
from tuneloop.export.merge import merge_adapter, stored_dtype
from tuneloop.export.onnx import export_onnx
from tuneloop.export.quantize import quantize_folder
from tuneloop.export.report import ExportReport, QualityCheck
from tuneloop.models.loading import load_model, load_tokenizer, pick_device
from tuneloop.models.resolve import ResolvedModel, read_config, resolve_model
from tuneloop.paths import home
from tuneloop.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ExportOptions:
    merge: bool = False
    quantize: str | None = None  # int8 | int4
    prune: float | None = None
    prune_pattern: str = "unstructured"
    onnx: bool = False
    gguf: str | None = None  # f16 | q8_0 | ... (export.gguf.TYPES)
    out: Path | None = None
    name: str | None = None
    max_quality_drop: float | None = None
    eval_data: Path | None = None
    device: str = "auto"
    workload: dict[str, Any] = field(default_factory=dict)  # Workload overrides (tests, benchmarks)
    before: Measurement | None = None  # the source measured earlier with this workload (benchmarks)

    @property
    def pruning(self) -> bool:
        return self.prune is not None or self.prune_pattern == "2:4"

    def steps(self) -> list[str]:
        names = ["merge"] if self.merge else []
        names += [f"prune {self.prune_label()}"] if self.pruning else []
        names += [f"quantize {self.quantize}"] if self.quantize else []
        names += [f"gguf {self.gguf}"] if self.gguf else []
        return names + (["onnx"] if self.onnx else [])

    def prune_label(self) -> str:
        return "2:4" if self.prune_pattern == "2:4" else f"{self.prune:g}"


class QualityDropError(TuneloopError):
    """The export lost more quality than --max-quality-drop allows; carries the report."""

    def __init__(self, report: ExportReport):
        q = report.quality
        task = (
            ""
            if q.task_drop is None
            else f", task score {report.before.task_score:.4f} → {report.after.task_score:.4f} ({q.task_drop:+.2%})"
        )
        super().__init__(
            f"export refused: quality dropped more than {q.max_drop:.2%} — perplexity "
            f"{report.before.perplexity:.4f} → {report.after.perplexity:.4f} ({q.perplexity_increase:+.2%}){task}; nothing registered",
            hint=f"the export and its report are in {report.output} for inspection; try a milder setting "
            "(lower --prune, int8 instead of int4) or raise --max-quality-drop",
        )
        self.report = report


def check_options(opts: ExportOptions, resolved: ResolvedModel | None, device: str) -> None:
    """Refuse what cannot work, naming the flag, before anything is loaded."""
    if not opts.steps():
        raise TuneloopError(
            "nothing to export: no step asked for",
            hint="add --merge, --quantize, --prune, --onnx or --gguf",
        )
    if opts.quantize and opts.quantize not in ("int8", "int4"):
        raise TuneloopError(f"unknown --quantize '{opts.quantize}'", hint="use int8 or int4")
    if opts.quantize and opts.onnx:
        raise TuneloopError(
            "--quantize and --onnx cannot be combined: torchao/bitsandbytes weights do not export to ONNX",
            hint="export --onnx alone (fp32), or quantize without --onnx",
        )
    if opts.gguf:
        _check_gguf(opts)
    if opts.pruning:
        pruning.check_prune_args(opts.prune, opts.prune_pattern, device)
    if opts.max_quality_drop is not None and opts.max_quality_drop < 0:
        raise TuneloopError("--max-quality-drop must be >= 0", hint="e.g. 0.05 allows a 5% drop")
    if resolved is None:
        return
    if opts.gguf:
        gguf_export.check_architecture(read_config(_model_folder(resolved)), resolved.ref)
    if resolved.is_adapter and not opts.merge:
        raise TuneloopError(
            f"'{resolved.ref}' is a LoRA adapter: it must be merged into its base before it can be "
            f"{'pruned, quantized or exported' if len(opts.steps()) else 'exported'}",
            hint="add --merge (merging happens first, then the other steps)",
        )
    if opts.merge and not resolved.is_adapter:
        raise TuneloopError(
            f"--merge needs a LoRA adapter, and '{resolved.ref}' is a full model", hint="drop --merge"
        )


def _check_gguf(opts: ExportOptions) -> None:
    gguf_export.gguf_type(opts.gguf or "")
    if opts.onnx or opts.quantize:
        other = "--onnx" if opts.onnx else f"--quantize {opts.quantize}"
        raise TuneloopError(
            f"--gguf and {other} cannot be combined: a GGUF is its own format with its own quantization",
            hint="export --gguf q8_0 (or q4_0, ...) for a smaller GGUF, or drop --gguf",
        )


def _model_folder(resolved: ResolvedModel) -> Path:
    """The folder whose config.json describes the model: an adapter's base, else the folder itself."""
    if not resolved.is_adapter:
        return resolved.path
    adapter = json.loads((resolved.path / "adapter_config.json").read_text())
    return resolve_model(str(adapter.get("base_model_name_or_path") or "")).path


def run_export(ref: str, opts: ExportOptions) -> ExportReport:
    """Export `ref` as `opts` says and return the report (already written next to the export)."""

    device = pick_device(opts.device)
    check_options(opts, None, device)
    resolved = resolve_model(ref)
    if opts.gguf and resolved.is_adapter:
        opts = replace(opts, merge=True)  # a GGUF holds the merged weights (see the module docstring)
    check_options(opts, resolved, device)
    out = output_dir(opts, resolved)
    work = Workload.from_file(opts.eval_data, **opts.workload)
    before = opts.before or measure(resolved.path, device, work, with_sparsity=opts.pruning)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-", dir=out.parent))
    try:
        steps = build(resolved, opts, device, stage)
        after = measure(stage, device, work, with_sparsity=opts.pruning)
        report = ExportReport(
            ref,
            str(out),
            steps,
            before,
            after,
            QualityCheck.of(before, after, opts.max_quality_drop),
            environment(device),
        )
        report.write(stage)
        os.replace(stage, out)  # onto a missing or empty folder: the export appears whole or not at all
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not report.quality.passed:
        raise QualityDropError(report)
    if opts.name:
        report.registered = register(out, opts.name, resolved, report)
        report.write(out)
    return report


def output_dir(opts: ExportOptions, resolved: ResolvedModel) -> Path:
    slug = "-".join(s.replace(" ", "").replace(":", "_") for s in opts.steps())
    out = opts.out or home() / "exports" / f"{opts.name or resolved.path.name}-{slug}"
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise TuneloopError(
            f"output folder '{out}' already exists and is not empty", hint="pass another --out or remove it"
        )
    return out


def build(resolved: ResolvedModel, opts: ExportOptions, device: str, out: Path) -> list[dict[str, Any]]:
    """Apply the steps in order, writing the result to `out`; returns what each step did."""
    steps: list[dict[str, Any]] = []
    model, tokenizer = _materialize(resolved, opts, device, steps)
    if opts.gguf:
        name = resolved.path.name if resolved.kind == "folder" else resolved.ref
        steps.append(gguf_export.export_gguf(model, tokenizer, out, gguf_export.gguf_type(opts.gguf), name))
    elif opts.onnx:
        export_onnx(model, out)
        steps.append({"step": "onnx", "opset": 18, "exporter": "torch.onnx.export(dynamo=True)"})
    elif opts.quantize:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = resolved.path if model is None else save_hf(model, tokenizer, Path(tmp) / "stage")
            del model
            steps.append(
                {"step": f"quantize {opts.quantize}", **quantize_folder(src, out, opts.quantize, device)}
            )
    else:
        save_hf(_as_stored(model, resolved, opts), tokenizer, out)
    if not opts.gguf:  # a GGUF carries its tokenizer; HF files next to it would be read instead of it
        tokenizer.save_pretrained(str(out))
    _write_prune_file(out, steps)
    return steps


def _materialize(
    resolved: ResolvedModel, opts: ExportOptions, device: str, steps: list[dict[str, Any]]
) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """The in-memory model the later steps need (None when quantization can read the folder)."""
    import torch

    on_cpu = opts.onnx or bool(opts.gguf)  # both writers read the weights on the host
    if opts.merge:
        model, tokenizer, details = merge_adapter(resolved.path, "cpu" if on_cpu else device)
        steps.append({"step": "merge", **details})
    elif opts.gguf and not opts.pruning:  # read in the stored dtype; the writer converts tensor by tensor
        model = load_model(resolved.path, "cpu", stored_dtype(resolved.path) or torch.float32)
        tokenizer = load_tokenizer(resolved.path)
    elif opts.pruning or on_cpu:
        dtype = torch.float32 if on_cpu or device == "cpu" else None
        model, tokenizer = (
            load_model(resolved.path, "cpu" if on_cpu else device, dtype),
            load_tokenizer(resolved.path),
        )
    else:
        return None, load_tokenizer(resolved.path)
    if opts.pruning:
        steps.append(_prune(model, opts))
    return model, tokenizer


def _write_prune_file(out: Path, steps: list[dict[str, Any]]) -> None:
    step = next((s for s in steps if s["step"].startswith("prune")), None)
    if step:
        (out / pruning.PRUNE_FILE).write_text(json.dumps(step, indent=2))


def _prune(model: PreTrainedModel, opts: ExportOptions) -> dict[str, Any]:
    if opts.prune_pattern == "2:4":
        return {"step": "prune 2:4", "pattern": "2:4", "sparsity": pruning.prune_2_4(model)}
    reached = pruning.prune_unstructured(model, opts.prune or 0.0)
    return {
        "step": f"prune {opts.prune:g}",
        "pattern": "unstructured",
        "requested": opts.prune,
        "sparsity": reached,
    }


def _as_stored(model: PreTrainedModel, resolved: ResolvedModel, opts: ExportOptions) -> PreTrainedModel:
    """A pruned model goes back to its source's stored dtype (it was loaded as fp32 on a CPU):
    pruning a bf16 model must not double its file. A merged model already has its base's dtype."""
    dtype = None if opts.merge else stored_dtype(resolved.path)
    return model if dtype is None else model.to(dtype)


def save_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def environment(device: str) -> dict[str, str]:
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": str(_cpus())}
    for package in ("torch", "transformers", "peft", "torchao", "onnxruntime", "bitsandbytes", "gguf"):
        with contextlib.suppress(md.PackageNotFoundError):
            env[package] = md.version(package)
    if device.startswith("cuda"):
        import torch

        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def register(out: Path, name: str, resolved: ResolvedModel, report: ExportReport) -> dict[str, Any]:
    """A new registry version of the export; its parent is the source when that is a registry version."""
    parent = _registry_parent(resolved)
    ratios = report.ratios()
    tags = {
        "tuneloop.export.steps": ",".join(s["step"] for s in report.steps),
        "tuneloop.export.source": resolved.ref,
        "tuneloop.export.format": report.after.format,
        "tuneloop.export.perplexity_before": f"{report.before.perplexity:.6g}",
        "tuneloop.export.perplexity_after": f"{report.after.perplexity:.6g}",
        "tuneloop.export.size_ratio": f"{ratios['size_bytes']:.4f}",
        "tuneloop.export.per_token_ratio": f"{ratios['per_token_s']:.4f}",
    }
    if report.quality.greedy_agreement is not None:
        tags["tuneloop.export.greedy_agreement"] = f"{report.quality.greedy_agreement:.4g}"
    if report.after.task_score is not None:
        tags["tuneloop.export.task_score_after"] = f"{report.after.task_score:.6g}"
    desc = f"export of {resolved.ref}: {tags['tuneloop.export.steps']}"
    info = Registry().register_folder(out, name, tags=tags, parent=parent, description=desc)
    return {
        "name": info.name,
        "version": info.version,
        "ref": f"{info.name}/{info.version}",
        "parent": parent,
    }


def _registry_parent(resolved: ResolvedModel) -> str | None:
    if resolved.kind != "registry":
        return None
    # the resolver records the exact version an alias pointed at when it was read
    return str((resolved.lineage or {}).get("registry_version") or resolved.ref)
