"""`tuneloop plan`: will this model and method fit the GPUs, and how to train it (memory estimate)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.models.formats import require_format
from tuneloop.models.resolve import resolve_model
from tuneloop.resources.plan import GiB, Plan, PlanRequest, make_plan, parse_memory
from tuneloop.resources.shapes import known_shape, resolve_shape


def plan(
    model: str = typer.Argument(
        "smollm2-135m", help="Known name (llama-3-8b, ...), hub id or local HF folder."
    ),
    method: str = typer.Option("lora", "--method", help="full | lora | qlora"),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per sequence."),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Sequences per GPU per forward pass."),
    gradient_checkpointing: bool = typer.Option(
        True, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute layers in backward."
    ),
    gpus: int = typer.Option(1, "--gpus", help="Number of GPUs (full FT shards states: FSDP/ZeRO-3)."),
    gpu_memory: str | None = typer.Option(
        None, "--gpu-memory", help="Memory per GPU, e.g. 80GiB (default: detected)."
    ),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank r."),
    lora_targets: str = typer.Option("q,k,v,o,gate,up,down", "--lora-targets", help="Adapted linears."),
    global_batch: int | None = typer.Option(
        None, "--global-batch", help="Target sequences per optimizer step."
    ),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | adamw8bit | sgd"),
    precision: str = typer.Option("bf16", "--precision", help="bf16 | fp16 | fp32"),
    master_weights: bool = typer.Option(False, "--master-weights", help="Full FT: fp32 master + states."),
    trainer: str = typer.Option(
        "tuneloop",
        "--trainer",
        help="tuneloop (fused loss, compiled layers: what `tuneloop train` runs on a GPU) | hf "
        "(plain transformers + PEFT)",
    ),
    checkpoint_layers: int | None = typer.Option(
        None, "--checkpoint-layers", help="Checkpoint only the first N layers (selective)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Estimate per-GPU training memory and say whether (and how) it fits."""
    fields = dict(
        model=model,
        method=method,
        seq_len=seq_len,
        micro_batch=micro_batch,
        gradient_checkpointing=gradient_checkpointing,
        gpus=gpus,
        gpu_memory=parse_memory(gpu_memory),
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        global_batch=global_batch,
        optimizer=optimizer,
        precision=precision,
        master_weights=master_weights,
        checkpoint_layers=checkpoint_layers,
        fused=_tuneloop_trainer(trainer) and precision != "fp32",
        compiled=_tuneloop_trainer(trainer),
    )
    req = load_config(PlanRequest, fields)  # a bad choice (e.g. --method) becomes a ConfigError
    _check_format(model)
    result = make_plan(resolve_shape(model), req)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1, default=str))
    else:
        render(result, Console())


def _check_format(model: str) -> None:
    """A local or registry folder must hold a trainable model: plan refuses exports and adapters by name."""
    if known_shape(model) is not None:
        return
    folder = Path(model).expanduser()
    if not folder.is_dir():
        folder = resolve_model(model).path  # a store name or a registry reference
    require_format(folder, model, "plan")


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.2f} GiB"


def render(p: Plan, console: Console) -> None:
    r = p.request
    title = (
        f"{p.shape.name}: {r.method}, seq {r.seq_len} x micro-batch {r.micro_batch}, "
        f"checkpointing {'on' if r.gradient_checkpointing else 'off'} - {p.strategy}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("per GPU", justify="right")
    table.add_column("note")
    for c in p.components:
        style = None if c.at_peak else "dim"
        note = c.note if c.at_peak else f"{c.note} (not at the peak)"
        table.add_row(c.name, _gib(c.bytes), note, style=style)
    table.add_row("total (peak)", _gib(p.total), f"torch-allocated {_gib(p.peak_allocated)}", style="bold")
    where = f" ({p.gpu_name})" if p.gpu_name else ""
    table.add_row("available", _gib(p.available), f"per GPU{where}")
    console.print(table)
    verdict = {True: "[green]fits[/]", False: "[red]does not fit[/]", None: "[yellow]unknown (no GPU)[/]"}[
        p.fits
    ]
    console.print(f"fits: {verdict}   trainable params: {p.trainable_params:,} of {p.total_params:,}")
    if p.max_micro_batch is not None:
        console.print(f"largest micro-batch that fits: {p.max_micro_batch}")
    if p.grad_accum is not None:
        console.print(f"gradient accumulation: {p.grad_accum} (global batch {r.global_batch})")
    for line in p.advice:
        console.print(f"  - {line}")


def _tuneloop_trainer(name: str) -> bool:
    if name not in ("tuneloop", "hf"):
        raise TuneloopError(f"--trainer '{name}' is not known", hint="use --trainer tuneloop or --trainer hf")
    return name == "tuneloop"
