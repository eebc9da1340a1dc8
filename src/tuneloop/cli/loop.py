"""`tuneloop loop run/status` (the feedback loop) and `tuneloop feedback review` (the approval queue).

tuneloop loop run --model acme-support --config examples/configs/loop.yaml --every 6h
tuneloop loop status --model acme-support
tuneloop feedback review --model acme-support            # approve / edit / reject, one by one
tuneloop feedback review --model acme-support --approve-all
"""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.interactions.loopstore import models
from tuneloop.interactions.loopstore import status as loop_status
from tuneloop.loop.config import LoopConfig, parse_duration

app = typer.Typer(
    help="The feedback loop: collect rated answers, curate, retrain, gate, canary, promote or roll back.",
    no_args_is_help=True,
)
console = Console()


def _config(path: Path | None, overrides: list[str]) -> Any:
    if path is None and not any(o.startswith("gate.frozen_eval=") for o in overrides):
        raise TuneloopError(
            "the loop needs a config (at least gate.frozen_eval)",
            hint="pass --config loop.yaml (see examples/configs/loop.yaml) or gate.frozen_eval=FILE",
        )
    return load_config(LoopConfig, path, overrides)


@app.command("run")
def run(
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. gate.margin=0.05."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Registered model name (its production alias is served)."
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="loop.yaml (collect, curate, retrain, gate, canary)."
    ),
    every: str = typer.Option(
        None, "--every", help="Run a cycle every DURATION (30m, 6h, 1d) until stopped."
    ),
) -> None:
    """Run one cycle (or one every DURATION); a stopped cycle resumes where it was."""
    from tuneloop.flows.cycle import Loop  # the stages: torch, transformers, peft, MLflow; loaded when run

    cfg = _config(config, list(overrides or []))
    interval = parse_duration(every, "--every") if every else None
    loop = Loop(model, cfg, say=lambda line: console.print(escape(line), highlight=False))
    while True:
        result = loop.run_cycle()
        console.print(f"cycle {result.cycle}: [bold]{result.outcome}[/] {escape(result.detail)}")
        if interval is None:
            return
        console.print(f"next cycle in {every} (Ctrl-C to stop)")
        time.sleep(interval)


@app.command("status")
def status(
    model: str = typer.Option(None, "--model", "-m", help="One model (default: every model with a loop)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
    last: int = typer.Option(20, "--last", min=1, help="Decisions shown per model."),
) -> None:
    """Cycles and every decision with the numbers behind it."""
    names = [model] if model else models()
    if not names:
        raise TuneloopError("no loop has run yet", hint="start one with `tuneloop loop run --model NAME`")
    reports = [loop_status(n) for n in names]
    if as_json:
        typer.echo(
            json.dumps(reports if not model else reports[0], indent=2, default=str, ensure_ascii=False)
        )
        return
    for r in reports:
        st = r["state"]
        console.print(
            f"[bold]{r['model']}[/]: cycle {st['cycle']}, stage {st['stage']}"
            + (f", outcome {st['outcome']}" if st.get("outcome") else "")
        )
        table = Table("time", "cycle", "stage", "decision", "reason", "numbers")
        for d in r["decisions"][-last:]:
            table.add_row(
                time.strftime("%m-%d %H:%M:%S", time.localtime(d["time"])),
                str(d["cycle"]),
                d["stage"],
                d["decision"],
                escape(d["reason"]),
                escape(_numbers(d["numbers"])),
            )
        console.print(table)


def _numbers(numbers: dict[str, Any]) -> str:
    """The headline numbers of a decision, compactly: each check (gate, canary) on a line of its own."""
    flat = []
    for k, v in numbers.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{ik}={_fmt(iv)}" for ik, iv in v.items() if not isinstance(iv, (dict, list)))
            if inner:
                flat.append(f"{k}: {inner}")
        elif not isinstance(v, list):
            flat.append(f"{k}={_fmt(v)}")
    lines = [_check(c) for c in numbers.get("checks") or [] if isinstance(c, dict)]
    return "\n".join([*lines, "; ".join(flat)] if flat else lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _check(c: dict[str, Any]) -> str:
    """gate: 'feedback token_f1 +0.120 [+0.050, +0.190] n=40 pass';
    canary: 'thumbs_up 0.8 vs 0.6 [0.1121, 0.2844] n=300/900 pass' (candidate vs production)."""
    n = "/".join(str(x) for x in c["n"]) if isinstance(c.get("n"), list) else str(c.get("n"))
    if "metric" in c:  # a gate check: the paired difference and its interval
        signed = lambda v: "?" if v is None else f"{v:+.3f}"  # noqa: E731
        head, low, high = (
            f"{c['name']} {c['metric']} {signed(c.get('diff'))}",
            signed(c.get("low")),
            signed(c.get("high")),
        )
    else:
        head, low, high = (
            f"{c['name']} {_fmt(c.get('candidate'))} vs {_fmt(c.get('production'))}",
            _fmt(c.get("low")),
            _fmt(c.get("high")),
        )
    bounds = "" if c.get("low") is None and c.get("high") is None else f" [{low}, {high}]"
    return f"{head}{bounds} n={n} {c.get('status')}"


def review(
    model: str = typer.Option(None, "--model", "-m", help="Only this model's proposals."),
    approve_all: bool = typer.Option(False, "--approve-all", help="Approve every pending proposal."),
    reject_all: bool = typer.Option(False, "--reject-all", help="Reject every pending proposal."),
    ids: str = typer.Option(
        None, "--ids", help="Only these item ids (comma list), with --approve-all/--reject-all."
    ),
    reason: str = typer.Option(None, "--reason", help="Why (with --reject-all)."),
    list_only: bool = typer.Option(False, "--list", help="List pending proposals and exit."),
    reviewer: str = typer.Option(None, "--reviewer", help="Your name in the record (default: $USER)."),
    database_url: str = typer.Option(
        None, "--database-url", help="Review database (default: the gateway's)."
    ),
) -> None:
    """Approve, edit or reject curated feedback before it is trained on (the loop waits for it)."""
    from tuneloop.interactions.review import ReviewQueue  # the serve extra (sqlalchemy): loaded when run

    if approve_all and reject_all:
        raise TuneloopError("--approve-all and --reject-all exclude each other", hint="pick one")
    queue = ReviewQueue(database_url)
    pending = queue.list(model, "pending")
    if ids:
        wanted = {_int_id(x) for x in ids.split(",") if x.strip()}
        missing = wanted - {p.id for p in pending}
        if missing:
            raise TuneloopError(f"no pending review item(s) {sorted(missing)}", hint="see them with --list")
        pending = [p for p in pending if p.id in wanted]
    who = reviewer or getpass.getuser()
    if not pending:
        console.print("nothing to review")
        return
    if list_only:
        for item in pending:
            _show(item)
        return
    if approve_all or reject_all:
        for item in pending:
            queue.approve(item.id, who) if approve_all else queue.reject(item.id, who, reason)
        console.print(f"{'approved' if approve_all else 'rejected'} {len(pending)} proposal(s)")
        return
    _interactive(queue, pending, who)


def _int_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TuneloopError(f"--ids: '{text}' is not an item id", hint="write e.g. --ids 3,4,7") from None


def _show(item: Any) -> None:
    console.rule(f"#{item.id} {item.model} cycle {item.cycle} ({item.source}) request {item.request_id}")
    for m in item.prompt:
        console.print(f"[bold]{m['role']}:[/] {escape(m['content'])}", highlight=False)
    if item.answer:
        console.print(f"[green]train on:[/] {escape(item.answer)}", highlight=False)
    if item.rejected_answer:  # alone: a thumb down (KTO), approve to learn to avoid it, edit to correct it
        label = "instead of" if item.answer else "avoid (thumbs down)"
        console.print(f"[red]{label}:[/] {escape(item.rejected_answer)}", highlight=False)


def _interactive(queue: Any, pending: list[Any], who: str) -> None:
    counts = {"approved": 0, "rejected": 0, "skipped": 0}
    for n, item in enumerate(pending):
        _show(item)
        choice = typer.prompt("[a]pprove, [e]dit, [r]eject, [s]kip, [A]pprove the rest, [q]uit", default="s")
        if choice == "A":
            for rest in pending[n:]:
                queue.approve(rest.id, who)
            counts["approved"] += len(pending) - n
            break
        if choice == "q":
            break
        if choice == "a":
            queue.approve(item.id, who)
            counts["approved"] += 1
        elif choice == "e":
            queue.approve(item.id, who, edited=typer.prompt("answer to train on", default=item.answer))
            counts["approved"] += 1
        elif choice == "r":
            queue.reject(item.id, who, typer.prompt("reason", default="rejected by reviewer"))
            counts["rejected"] += 1
        else:
            counts["skipped"] += 1
    console.print(", ".join(f"{v} {k}" for k, v in counts.items()))
