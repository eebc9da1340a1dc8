"""`tuneloop export REF [--merge] [--prune S] [--quantize int8|int4] [--onnx] [--gguf TYPE] ...`: thin;
work in tuneloop.export."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.export.pipeline import ExportOptions, QualityDropError, run_export
from tuneloop.export.report import GGUF_NOTE, REPORT_MD, ExportReport, table_rows, verdict
from tuneloop.models.formats import MODELFILE, require_complete, require_format
from tuneloop.models.resolve import resolve_model
from tuneloop.paths import check_writable_dir


def export(
    model: str = typer.Argument(
        ..., help="Model to export: NAME@alias, NAME/VERSION, folder, adapter folder, store name."
    ),
    merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into its base (first step)."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="Weight-only int8 or int4 (torchao on CPU, bitsandbytes on CUDA)."
    ),
    prune: float | None = typer.Option(
        None, "--prune", help="Unstructured magnitude pruning to this sparsity (0-1) per linear layer."
    ),
    prune_pattern: str = typer.Option(
        "unstructured", "--prune-pattern", help="unstructured, or 2:4 (semi-structured; NVIDIA GPU only)."
    ),
    onnx: bool = typer.Option(
        False, "--onnx", help="Export to ONNX with KV cache inputs/outputs, measured on ONNX Runtime."
    ),
    gguf: str | None = typer.Option(
        None,
        "--gguf",
        help="Write a GGUF for llama.cpp/Ollama (Llama family): f16, bf16, f32, q8_0, q5_1, q5_0, q4_1 or "
        "q4_0, with an Ollama Modelfile; an adapter is merged first (no --merge needed). Measured by "
        "loading the file back with transformers' GGUF loader.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default TUNELOOP_HOME/exports/...)."),
    name: str | None = typer.Option(
        None, "--name", help="Register the export as a new version of this registry model."
    ),
    max_quality_drop: float | None = typer.Option(
        None,
        "--max-quality-drop",
        help="Refuse if perplexity rises or the task score falls by more than this fraction (0.05 = 5%).",
    ),
    eval_data: Path | None = typer.Option(
        None,
        "--eval-data",
        help="JSONL (SFT or text rows) for perplexity and task score; default: a built-in text.",
    ),
    max_samples: int = typer.Option(
        32, "--max-samples", min=1, help="Evaluate the first N rows of --eval-data."
    ),
    latency_tokens: int = typer.Option(32, "--latency-tokens", min=2, help="New tokens per latency run."),
    repeats: int = typer.Option(
        3, "--repeats", min=1, help="Latency runs per prompt (the median is reported)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Merge, prune, quantize or export a model to ONNX or GGUF; measure it before and after; optionally register it."""
    opts = ExportOptions(
        merge=merge,
        quantize=quantize,
        prune=prune,
        prune_pattern=prune_pattern,
        onnx=onnx,
        gguf=gguf,
        out=out,
        name=name,
        max_quality_drop=max_quality_drop,
        eval_data=eval_data,
        device=device,
        workload={"max_samples": max_samples, "latency_tokens": latency_tokens, "repeats": repeats},
    )
    # an export (ONNX, int4, int8) is an end product: refused by name before anything is measured or written
    source = resolve_model(model).path
    require_format(source, model, "export")
    require_complete(source, model)
    if out is not None:
        check_writable_dir(out, "--out")
    try:
        report = run_export(model, opts)
    except QualityDropError as e:
        if json_output:
            typer.echo(json.dumps({**e.report.to_dict(), "refused": True}, indent=2, default=str))
        else:
            Console().print(_table(e.report))
        raise
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    _print_human(report)


def _table(report: ExportReport) -> Table:
    steps = " → ".join(s["step"] for s in report.steps)
    table = Table(
        title=f"{escape(report.source)}: {escape(steps)} ({report.after.device})", title_justify="left"
    )
    for column, justify in (("", "left"), ("before", "right"), ("after", "right"), ("after/before", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in table_rows(report):
        table.add_row(*row)
    return table


def _print_human(report: ExportReport) -> None:
    console = Console()
    console.print(_table(report))
    console.print(escape(verdict(report)))
    if report.after.format == "gguf":
        console.print(escape(GGUF_NOTE))
        console.print(f"run it: cd {escape(report.output)} && ollama create NAME -f {MODELFILE}")
    console.print(f"[green]exported[/] to {escape(report.output)} (report: {REPORT_MD})")
    if report.registered:
        reg = report.registered
        parent = f" (parent {reg['parent']})" if reg.get("parent") else ""
        console.print(f"[green]registered[/] as {escape(reg['ref'])}{escape(parent)}")
