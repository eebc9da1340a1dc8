"""`tuneloop quickstart`: the whole loop on the bundled example corpus, stage by stage.

tuneloop quickstart                       # ... and keep serving until Ctrl-C (in a terminal)
tuneloop quickstart --no-serve            # scripts and CI: answer directly, leave nothing running
tuneloop quickstart --force epochs=6      # redo every stage, with a training override
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table

from tuneloop.evaluation.compare import metric_rows
from tuneloop.evaluation.report import fmt
from tuneloop.flows.quickstart.settings import DEFAULT_NAME, DEFAULT_QUESTION, Settings, Workdir
from tuneloop.models.catalog import DEFAULT_MODEL

console = Console(soft_wrap=True)  # long paths stay whole (copyable)
STAGES = (
    "Base model",
    "Example corpus",
    "Evaluate the base model",
    "LoRA fine-tune",
    "Evaluate the fine-tuned model",
    "Register",
    "Serve",
)


def quickstart(
    overrides: list[str] = typer.Argument(
        None, help="Training config overrides (key=value), e.g. epochs=6 optim.lr=1e-3."
    ),
    serve: bool = typer.Option(
        None,
        "--serve/--no-serve",
        help="Keep a server running at the end (default: only when run in a terminal). "
        "--no-serve answers the sample question directly and leaves nothing running.",
    ),
    workdir: Path = typer.Option(
        None,
        "--workdir",
        "-w",
        help="Folder for the dataset, run, evaluations and state (default: TUNELOOP_HOME/quickstart).",
    ),
    force: bool = typer.Option(False, "--force", help="Redo every stage instead of reusing finished ones."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model reference."),
    corpus: Path = typer.Option(
        None,
        "--corpus",
        help="Corpus folder with docs/, qa/train.jsonl, qa/heldout.jsonl (default: examples/acme-kb).",
    ),
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        help="Training config (default: examples/configs/quickstart-sft-lora.yaml).",
    ),
    name: str = typer.Option(DEFAULT_NAME, "--name", "-n", help="Registered and served model name."),
    question: str = typer.Option(DEFAULT_QUESTION, "--question", "-q", help="The sample question."),
    eval_samples: int = typer.Option(
        None, "--eval-samples", min=1, help="Held-out questions to evaluate (default: all)."
    ),
    eval_max_new_tokens: int = typer.Option(
        32, "--eval-max-new-tokens", min=1, help="Longest generated answer in the evaluations."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address of the server."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="Port of the server."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 …"),
) -> None:
    """From the bundled docs to a fine-tuned, evaluated, registered and served model, in one command.

    Re-running reuses every finished stage whose inputs are unchanged (state in WORKDIR/state.json).
    """

    settings = Settings(
        **({"workdir": workdir} if workdir else {}),
        model=model,
        corpus=corpus,
        train_config=config,
        overrides=list(overrides or []),
        name=name,
        eval_samples=eval_samples,
        eval_max_new_tokens=eval_max_new_tokens,
        question=question,
        device=device,
        force=force,
    )
    if serve is None:
        serve = sys.stdin.isatty() and sys.stdout.isatty()
        if not serve:
            console.print(
                "[dim]not a terminal: running as --no-serve (pass --serve to keep a server running)[/]"
            )
    run(settings, serve=serve, host=host, port=port)


def run(
    settings: Any,
    *,
    serve: bool,
    host: str = "127.0.0.1",
    port: int = 8000,
    until: Callable[[Any, str], None] | None = None,
) -> dict[str, Any]:
    """All stages in order; `until(running, key)` replaces waiting for Ctrl-C (tests)."""
    from tuneloop.flows.quickstart import serve as qsv  # the serve extra (fastapi, uvicorn): loaded when run
    from tuneloop.flows.quickstart import stages as qs  # torch, transformers, peft, MLflow: loaded when run

    settings.check()
    # "creating database tables", "started monitoring system metrics", bitsandbytes' optional CPU
    # kernels: not news in a quickstart (mlflow sets its level from this variable when imported)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for noisy in ("mlflow", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR if noisy == "bitsandbytes" else logging.WARNING)
    wd = Workdir(settings)
    qs.train_config(settings, wd)  # a bad key or value fails now, not after the evaluation
    if serve:
        qsv.check_port(host, port)
    timings: list[tuple[str, float, str]] = []
    started = time.perf_counter()
    with wd.locked():
        console.print(f"[bold]tuneloop quickstart[/]  work folder {escape(str(wd.root))}")
        if wd.state.problem:
            console.print(f"[yellow]warning:[/] {escape(wd.state.problem)}")
        with _stage(1, "Base model", timings) as note:
            model = qs.pull_model(settings, step=lambda t: console.print(f"    {escape(t)}"))
            note(model.action)
            console.print(f"[green]✓[/] {escape(settings.model)} {model.action}: {escape(str(model.path))}")
        with _stage(2, "Example corpus: data prepare of docs/", timings) as note:
            data = qs.prepare_docs(settings, wd, model)
            note("reused" if data.reused else "done")
            _print_data(settings, data)
        with _stage(3, "Evaluate the base model on the held-out questions", timings) as note:
            base = _evaluate(settings, wd, "base", model.path, [model.key], note)
        with _stage(4, "LoRA fine-tune on qa/train.jsonl", timings) as note:
            trained = _train(settings, wd, model, note)
        with _stage(5, "Evaluate the fine-tuned model", timings) as note:
            tuned = _evaluate(
                settings, wd, "tuned", trained.model_dir, [trained.weights_key, model.key], note
            )
            _print_before_after(base, tuned)
        with _stage(6, f"Register {settings.name} and alias it production", timings) as note:
            reg = qs.register(settings, wd, trained)
            note("reused" if reg.reused else "done")
            _print_register(reg)
            serve_yaml = qsv.write_serve_config(wd, reg, host, port)
        title = "Serve it and ask the sample question" if serve else "Ask the sample question (no server)"
        with _stage(7, title, timings) as note:
            running, key = _serve(settings, wd, reg, host, port) if serve else (_answer(settings, reg), None)
            note("done")
        _print_summary(timings, time.perf_counter() - started, reg, serve_yaml)
    if running is not None:
        _print_serving(running, key, settings.question)
        (until or (lambda r, _k: r.wait()))(running, key)
        running.stop()
        console.print("server stopped")
    return {"timings": timings, "base": base, "tuned": tuned, "train": trained, "register": reg}


@contextmanager
def _stage(n: int, title: str, timings: list[tuple[str, float, str]]) -> Iterator[Callable[[str], None]]:
    console.rule(f"[bold cyan][{n}/{len(STAGES)}] {title}", align="left")
    status = ["done"]
    t = time.perf_counter()
    yield lambda s: status.__setitem__(0, s)
    timings.append((title, time.perf_counter() - t, status[0]))


def _bar(description: str) -> Progress:
    return Progress(
        TextColumn("    {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _evaluate(settings: Any, wd: Any, which: str, ref: Path, key: list[Any], note: Callable) -> Any:
    from tuneloop.flows.quickstart import stages as qs  # torch, transformers, peft, MLflow: loaded when run

    lines = [x for x in settings.heldout.read_text(encoding="utf-8").splitlines() if x.strip()]
    n = min(settings.eval_samples or len(lines), len(lines))
    console.print(
        f"    {n} questions of {escape(str(settings.heldout))}, greedy answers of at most "
        f"{settings.eval_max_new_tokens} new tokens (--eval-samples, --eval-max-new-tokens)"
    )
    with _bar("answering") as bar:
        task = bar.add_task("answering", total=None, extra="")
        t = time.perf_counter()
        result = qs.evaluate_stage(
            settings,
            wd,
            which,
            ref,
            key,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
        if result.reused:
            bar.update(task, total=result.report.n, completed=result.report.n, extra="reused")
    note("reused" if result.reused else "done")
    m = result.report.metrics
    how = f"reused {result.out / 'eval.json'}" if result.reused else f"{time.perf_counter() - t:.0f} s"
    console.print(
        f"[green]✓[/] contains the key fact {m.get('contains_answer', 0):.1%}, token F1 "
        f"{m.get('token_f1', 0):.3f}, perplexity {m['perplexity']:.2f}  [dim]({escape(how)}, "
        f"{result.precision})[/]"
    )
    return result


def _train(settings: Any, wd: Any, model: Any, note: Callable) -> Any:
    from tuneloop.flows.quickstart import stages as qs  # torch, transformers, peft, MLflow: loaded when run

    cfg = qs.train_config(settings, wd)
    console.print(
        f"    {escape(str(settings.train_config))}: LoRA r={cfg.lora.rank}, lr {cfg.optim.lr:g}, "
        f"{cfg.epochs:g} epochs, micro-batch {cfg.batch.micro_batch}, max_length {cfg.data.max_length}"
    )
    with _bar("training") as bar:
        task = bar.add_task("training", total=None, extra="")

        def step(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, extra=f"loss {loss:.3f}")

        trained = qs.finetune(settings, wd, model, progress=step)
        if trained.reused:
            steps = trained.metrics.get("steps", 1)
            bar.update(task, total=steps, completed=steps, extra="reused")
    note("reused" if trained.reused else "done")
    seconds = trained.metrics.get("train_seconds", 0.0)
    console.print(
        f"[green]✓[/] {trained.metrics.get('steps')} steps in {seconds:.0f} s, final loss "
        f"{trained.metrics.get('final_train_loss') or float('nan'):.3f}: {escape(str(trained.model_dir))}"
        + (" [dim](reused)[/]" if trained.reused else "")
    )
    return trained


def _print_data(settings: Any, data: Any) -> None:
    m = data.manifest
    c, t = m["counts"], m["tokens"]
    removed = ", ".join(f"{k} {v}" for k, v in m["removed"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in m["pii"].items() if k != "mode" and v) or "none"
    table = Table(show_header=False, box=None, padding=(0, 2))
    for row in (
        ("input files", str(len(m["inputs"]))),
        ("records read", str(c.get("read", 0))),
        ("removed", removed),
        ("PII masked", pii),
        ("rows train / val", f"{c['train_rows']} / {c['val_rows']}"),
        ("tokens", str(t["total"])),
        ("fingerprint", m["fingerprint"][:23] + "…"),
    ):
        table.add_row(*(escape(x) for x in row))
    console.print(table)
    if m["removed"].get("format.missing_text"):
        console.print(
            "    [dim]format.missing_text: chat and CSV rows carry no `text` field, so a pretraining "
            "set skips them (`data prepare --kind sft` takes the chats)[/]"
        )
    how = "reused" if data.reused else "written"
    console.print(f"[green]✓[/] pretraining dataset {how}: {escape(str(data.out))}")
    console.print(
        f"    [dim]the fine-tune below uses the curated QA pairs {escape(str(settings.train_file))}[/]"
    )


def _print_before_after(base: Any, tuned: Any) -> None:
    table = Table(title=f"held-out questions ({tuned.report.n})", title_justify="left")
    for col, justify in (("metric", "left"), ("base", "right"), ("fine-tuned", "right"), ("change", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    names = {
        "contains_answer": "contains the key fact",
        "token_f1": "token F1",
        "rouge_l": "ROUGE-L",
        "exact_match": "exact match",
        "perplexity": "perplexity (answers)",
    }
    rows = {r.name: r for r in metric_rows(tuned.report.metrics, base.report.metrics)}
    for row in (rows[n] for n in names if n in rows):
        color = {True: "green", False: "red", None: "dim"}[row.better]
        table.add_row(
            names[row.name],
            fmt(row.baseline, row.name),
            fmt(row.model, row.name),
            f"[{color}]{fmt(row.delta, 'delta')}[/]",
        )
    console.print(table)
    pairs = list(zip(base.report.samples, tuned.report.samples, strict=False))
    learned = [
        (b, t) for b, t in pairs if t.scores.get("contains_answer") and not b.scores.get("contains_answer")
    ]
    if learned:
        console.print(
            f"  {len(learned)} held-out answers now hold the key fact; the first {min(3, len(learned))}:"
        )
    for b, t in (learned or pairs)[:3]:
        console.print(f"  [bold]Q:[/] {escape(t.question)}  [dim](key fact: {escape(t.answer or '-')})[/]")
        console.print(f"    base:       {escape(_short(b.prediction))}")
        console.print(f"    fine-tuned: {escape(_short(t.prediction))}")


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_register(reg: Any) -> None:
    verb = "already registered" if reg.reused else "registered"
    base = f" (LoRA adapter on {reg.base})" if reg.base else ""
    console.print(f"[green]✓[/] {verb} {reg.name}/{reg.version}{escape(base)}")
    if reg.production == reg.version:
        console.print(f"[green]✓[/] {reg.name}@production -> {reg.name}/{reg.version}")
    else:
        console.print(
            f"[yellow]note:[/] {reg.name}@production points at {reg.name}/{reg.production} "
            f"(moved since); serving that"
        )


def _answer(settings: Any, reg: Any) -> None:
    from tuneloop.flows.quickstart import stages as qs  # torch, transformers, peft, MLflow: loaded when run

    console.print(f"    loading {reg.ref} without a server (plain transformers)")
    console.print(f"[bold]Q:[/] {escape(settings.question)}\n[bold]A:[/] ", end="")
    for piece in qs.answer_directly(reg.ref, settings.question, settings.device):
        console.print(escape(piece), end="", highlight=False)
        console.file.flush()
    console.print()


def _serve(settings: Any, wd: Any, reg: Any, host: str, port: int) -> tuple[Any, str]:
    from tuneloop.flows.quickstart import serve as qsv  # the serve extra (fastapi, uvicorn): loaded when run

    console.print(f"    starting the gateway on http://{host}:{port}/v1 with {reg.ref} (loading the engine)")
    running = qsv.start_server(reg, host, port)
    key = qsv.create_key(wd, reg.name)
    console.print(f"[green]✓[/] serving {reg.name} ({reg.ref}) at {running.url}")
    console.print(f"[bold]Q:[/] {escape(settings.question)}\n[bold]A:[/] ", end="")
    try:
        for piece in qsv.ask_server(running, key, settings.question):
            console.print(escape(piece), end="", highlight=False)
            console.file.flush()
    except BaseException:
        running.stop()
        raise
    console.print()
    return running, key


def _print_summary(timings: list[tuple[str, float, str]], total: float, reg: Any, serve_yaml: Path) -> None:
    table = Table(title="quickstart", title_justify="left", show_header=True)
    table.add_column("stage")
    table.add_column("s", justify="right")
    table.add_column("")
    for title, seconds, status in timings:
        table.add_row(escape(title), f"{seconds:.1f}", status)
    table.add_row("[bold]total[/]", f"[bold]{total:.1f}[/]", "")
    console.print(table)
    console.print("next:")
    console.print(f"  tuneloop chat {reg.ref}            # talk to it in the terminal")
    console.print(f"  tuneloop registry show {reg.ref}   # lineage, metrics, alias history")
    console.print(f"  tuneloop serve --config {serve_yaml}   # serve it again later")


def _print_serving(running: Any, key: str, question: str) -> None:
    from tuneloop.flows.quickstart import serve as qsv  # the serve extra (fastapi, uvicorn): loaded when run

    console.print(Panel(f"[bold]{key}[/]", title="API key (shown once; stored hashed)", title_align="left"))
    console.print("curl:")
    console.print(qsv.curl_line(running, key, question), soft_wrap=True, highlight=False, markup=False)
    console.print("Python (pip install openai):")
    console.print(Syntax(qsv.openai_snippet(running, key, question), "python", theme="ansi_dark"))
    console.print(f"[bold green]serving at {running.url}[/] - press Ctrl-C to stop")
