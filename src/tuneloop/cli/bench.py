"""`tuneloop bench engine`: measure the engine against transformers on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Benchmarks measured on this machine, each against its baseline in the same run.",
    no_args_is_help=True,
)
console = Console()


@app.command()
def engine(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model reference."),
    new_tokens: int = typer.Option(64, "--new-tokens", min=1),
    concurrency: str = typer.Option("1,8,32", "--concurrency", help="Comma-separated client counts."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    out: Path = typer.Option(None, "--out", help="Write the JSON report here."),
) -> None:
    """Output tokens/s at several concurrencies vs `generate` one at a time and in static batches."""
    from tuneloop.bench.engine import run
    from tuneloop.errors import TuneloopError
    from tuneloop.models.resolve import resolve_model

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise TuneloopError(
            f"--concurrency '{concurrency}' is not a list of integers", hint="e.g. 1,8,32"
        ) from None
    folder = resolve_model(model, pull=True).path
    report = run(str(folder), new=new_tokens, concurrency=levels, dtype=dtype)
    table = Table(
        title=f"engine benchmark: {model}, {new_tokens} new tokens, {dtype}, {report['threads']} threads"
    )
    for col in ("what", "requests", "output tokens/s", "vs one at a time"):
        table.add_column(col)
    for r in report["results"]:
        table.add_row(
            r["name"], str(r["requests"]), f"{r['tokens_per_s']:.1f}", f"{r['ratio_vs_one_at_a_time']:.2f}x"
        )
    console.print(table)
    if out:
        out.write_text(json.dumps(report, indent=1))
