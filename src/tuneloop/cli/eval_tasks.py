"""`tuneloop eval MODEL --tasks ...`: general-ability tasks (lm-evaluation-harness); thin, the work is
in tuneloop.evaluation.lm_eval_harness. Split from cli/eval.py, which only routes here."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.lm_eval_harness import (
    MetricScore,
    TasksReport,
    paired_results,
    run_tasks,
    task_manager,
)
from tuneloop.evaluation.lm_eval_report import (
    DiffInterval,
    diff_text,
    summary_rows,
    to_json,
    write_task_reports,
)
from tuneloop.loop.stats import paired_interval
from tuneloop.models.resolve import resolve_model

TASKS_HELP = (
    "General-ability tasks through lm-evaluation-harness, comma-separated. Shipped, offline: "
    "tuneloop_general (= tuneloop_mc_en, tuneloop_mc_zh: multiple choice; tuneloop_qa_en, tuneloop_qa_zh: "
    "short answers), tags tuneloop_mc, tuneloop_qa. Any lm-evaluation-harness task or group name, or a "
    "task YAML path, works too when its data is available locally (`lm-eval ls tasks`)."
)
API_HELP = (
    "With --tasks: evaluate through an OpenAI-compatible server's /v1/completions (echo + logprobs), "
    "e.g. http://127.0.0.1:8000/v1 of `tuneloop serve`; MODEL (and --baseline) are then served model "
    "names, and the key is read from OPENAI_API_KEY."
)
TOKENIZER_HELP = "With --api-base: a local model reference whose tokenizer the server uses (default: MODEL)."


def run_tasks_command(
    model: str,
    tasks: str,
    *,
    baseline: str | None,
    max_samples: int | None,
    batch_size: int,
    device: str,
    out: Path | None,
    json_output: bool,
    api_base: str | None,
    tokenizer: str | None,
    confidence: float = 0.95,
) -> None:
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    task_manager(names)  # an unknown task fails here, in a second, naming the ones that exist
    if api_base is None:
        for ref in (model, baseline):
            if ref:
                resolve_model(ref)
    kwargs = dict(limit=max_samples, device=device, batch_size=batch_size, confidence=confidence)
    if api_base is not None:
        kwargs = dict(limit=max_samples, confidence=confidence, backend="api", base_url=api_base)
    report = run_tasks(model, names, **_with_tokenizer(kwargs, tokenizer, model))
    base = run_tasks(baseline, names, **_with_tokenizer(kwargs, tokenizer, baseline)) if baseline else None
    paired = paired_results(base, report) if base else None
    diffs = {name: _interval(p.base, p.candidate, confidence) for name, p in (paired or {}).items() if p.n}
    if out is not None:
        try:
            write_task_reports(out, report, base, paired, diffs)
        except OSError as e:
            raise TuneloopError(f"could not write the report into --out '{out}': {e}") from None
    if json_output:
        typer.echo(json.dumps(to_json(report, base, paired, diffs), indent=2, ensure_ascii=False))
        return
    _print(report, base, diffs, out)


def _with_tokenizer(kwargs: dict, tokenizer: str | None, model: str) -> dict:
    if kwargs.get("backend") != "api":
        return kwargs
    return {**kwargs, "tokenizer": tokenizer or model}


def _interval(base: list[float], candidate: list[float], confidence: float) -> DiffInterval:
    """The paired difference as the gate computes it (exact-score for 0/1 values, BCa otherwise)."""
    i = paired_interval(base, candidate, confidence)
    return DiffInterval(float(i.estimate or 0.0), i.low, i.high, i.method, i.p_value)


def _print(
    report: TasksReport, base: TasksReport | None, diffs: dict[str, DiffInterval], out: Path | None
) -> None:
    console = Console()
    level = f"{report.confidence:.0%}"
    table = Table(
        title=f"{escape(report.model)}: {len(report.tasks)} task(s), {report.backend} backend",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("task", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("n", justify="right")
    if base is None:
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("± stderr", justify="right")
        table.add_column(f"{level} interval", justify="right", no_wrap=True)
    else:
        table.add_column(f"model [{level}]", justify="right", no_wrap=True)
        table.add_column(f"baseline [{level}]", justify="right", no_wrap=True)
        table.add_column(f"difference [{level}]", justify="right", no_wrap=True)
    for r in summary_rows(report, base, diffs):
        cells = [r.task, r.metric + (" *" if r.primary else ""), str(r.n)]
        if base is None:
            s = r.model
            cells += [
                f"{s.value:.3f}",
                "-" if s.stderr is None else f"{s.stderr:.3f}",
                _bounds(s.low, s.high),
            ]
        else:
            color = "dim" if r.diff is None else _color(r.diff)
            cells += [_short(r.model), _short(r.baseline), f"[{color}]{diff_text(r.diff)}[/]"]
        table.add_row(*cells)
    console.print(table)
    seconds = sum(report.timing.values()) + (sum(base.timing.values()) if base else 0)
    note = "* the task's primary metric" + (
        "; difference: model - baseline on the same examples" if base else ""
    )
    wrote = f"; wrote {out / 'tasks.json'} and {out / 'tasks.md'}" if out else ""
    console.print(f"[dim]{note}; {seconds:.1f} s{escape(wrote)}[/]")


def _bounds(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.3f} - {high:.3f}"


def _short(score: MetricScore | None) -> str:
    if score is None:
        return "-"
    return f"{score.value:.2f}" + ("" if score.low is None else f" [{score.low:.2f}, {score.high:.2f}]")


def _color(diff: DiffInterval) -> str:
    if diff.low is not None and diff.low > 0:
        return "green"
    if diff.high is not None and diff.high < 0:
        return "red"
    return "default"
