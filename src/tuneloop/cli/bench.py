"""`tuneloop bench engine`: measure the engine against transformers on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.errors import TuneloopError
from tuneloop.models.resolve import resolve_model

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
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (both sides run there)."),
    out: Path = typer.Option(None, "--out", help="Write the JSON report here."),
) -> None:
    """Output tokens/s at several concurrencies vs `generate` one at a time and in static batches."""
    from tuneloop.bench.engine import run  # torch: seconds that other commands do not pay

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise TuneloopError(
            f"--concurrency '{concurrency}' is not a list of integers", hint="e.g. 1,8,32"
        ) from None
    folder = resolve_model(model, pull=True).path
    report = run(str(folder), new=new_tokens, concurrency=levels, dtype=dtype, device=device)
    table = Table(
        title=f"engine benchmark: {model}, {new_tokens} new tokens, {dtype}, {device}, {report['threads']} threads"
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


@app.command("serve")
def serve_load(
    url: str = typer.Option(
        "http://127.0.0.1:8000/v1", "--url", help="Base URL of an OpenAI-compatible server."
    ),
    model: str = typer.Option(..., "--model", "-m", help="Served model name."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, help="Clients sending back to back."),
    requests: int = typer.Option(100, "--requests", "-n", min=1),
    prompt_len: int = typer.Option(64, "--prompt-len", min=1, help="Prompt length in words."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1),
    stream: bool = typer.Option(False, "--stream", help="Stream (measures TTFT and TPOT)."),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Bearer key."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report only."),
) -> None:
    """Load a served model: QPS, latency P50/P90/P99, TTFT, TPOT, error and 429 rates."""
    from tuneloop.bench.serve import run  # aiohttp: the serve extra

    report = run(url, model, requests, concurrency, prompt_len, max_tokens, stream, api_key)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    table = Table(title=f"{model} at {url}: {concurrency} clients, {requests} requests, stream={stream}")
    for col in ("QPS", "tok/s", "latency p50/p90/p99 s", "TTFT p50 s", "TPOT p50 s", "errors", "429"):
        table.add_column(col)
    lat, ttft, tpot = report["latency_s"], report["ttft_s"], report["tpot_s"]
    table.add_row(
        str(report["qps"]),
        str(report["output_tokens_per_s"]),
        f"{lat['p50']}/{lat['p90']}/{lat['p99']}",
        str(ttft["p50"]),
        str(tpot["p50"]),
        f"{report['error_rate']:.1%}",
        f"{report['rate_429']:.1%}",
    )
    console.print(table)
