"""`tuneloop eval MODEL --data FILE [--baseline MODEL]`: thin; the work is in tuneloop.evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.cli import eval_judge, eval_tasks
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.compare import Comparison, compare, metric_rows
from tuneloop.evaluation.harness import EvalReport, evaluate
from tuneloop.evaluation.judge_eval import JudgeResult, judge_reports
from tuneloop.evaluation.report import fmt, to_json, write_reports
from tuneloop.models.resolve import resolve_model
from tuneloop.paths import check_writable_dir


def eval_command(
    model: str = typer.Argument(..., help="Model to evaluate: folder, store name, adapter folder or hub id."),
    data: Path | None = typer.Option(
        None, "--data", help="JSONL file (SFT messages or text rows), or a dataset folder."
    ),
    tasks: str | None = typer.Option(None, "--tasks", help=eval_tasks.TASKS_HELP),
    api_base: str | None = typer.Option(None, "--api-base", help=eval_tasks.API_HELP),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help=eval_tasks.TOKENIZER_HELP),
    baseline: str | None = typer.Option(None, "--baseline", help="A second model to compare against."),
    judge: str | None = typer.Option(None, "--judge", help=eval_judge.JUDGE_HELP),
    judge_rubric: Path | None = typer.Option(None, "--judge-rubric", help=eval_judge.RUBRIC_HELP),
    max_samples: int | None = typer.Option(
        None, "--max-samples", min=1, help="Evaluate the first N rows only."
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest generated reply."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Rows per forward pass / generate call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder to write eval.json and eval.md (tasks.json and tasks.md with --tasks) into.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Measure a model: perplexity, and for SFT data generated answers scored against references
    (with --baseline --judge, also judged pairwise by an LLM); with --tasks, general-ability tasks
    (lm-evaluation-harness) with confidence intervals."""
    judge_config = eval_judge.judge_config(judge, judge_rubric, baseline=baseline, tasks=tasks)
    if tasks is not None:
        if data is not None:
            raise TuneloopError("--data and --tasks are two evaluations", hint="run them one at a time")
        return eval_tasks.run_tasks_command(
            model,
            tasks,
            baseline=baseline,
            max_samples=max_samples,
            batch_size=batch_size,
            device=device,
            out=out,
            json_output=json_output,
            api_base=api_base,
            tokenizer=tokenizer,
        )
    if data is None:
        raise TuneloopError("nothing to evaluate on", hint="give --data FILE, or --tasks tuneloop_general")
    if api_base is not None or tokenizer is not None:
        raise TuneloopError("--api-base and --tokenizer work with --tasks only")
    # what can be checked in a second is, before the evaluation runs for minutes
    for ref in (model, baseline):
        if ref:
            resolve_model(ref)
    if out is not None:
        check_writable_dir(out, "--out")
    kwargs = dict(
        max_samples=max_samples, max_new_tokens=max_new_tokens, batch_size=batch_size, device=device
    )
    report = evaluate(model, data, **kwargs)
    base = evaluate(baseline, data, **kwargs) if baseline else None
    comparison = compare(report, base) if base else None
    judged = judge_reports(report, base, judge_config) if base and judge_config else None
    if out is not None:
        try:
            write_reports(out, report, base, comparison, judged)
        except OSError as e:  # the disk filled up or the folder changed since the check
            raise TuneloopError(f"could not write the report into --out '{out}': {e}") from None
    if json_output:
        typer.echo(json.dumps(to_json(report, base, comparison, judged), indent=2, ensure_ascii=False))
        return
    _print_human(report, base, comparison, out, judged)


def _table(report: EvalReport, base: EvalReport | None) -> Table:
    table = Table(title=f"{report.n} {report.kind} rows from {escape(report.data)}", title_justify="left")
    table.add_column("metric")
    table.add_column(escape(report.model), justify="right")
    if base:
        table.add_column(escape(base.model), justify="right")
        table.add_column("delta", justify="right")
    for row in metric_rows(report.metrics, base.metrics if base else None):
        cells = [row.name, fmt(row.model, row.name)]
        if base:
            color = {True: "green", False: "red", None: "dim"}[row.better]
            cells += [fmt(row.baseline, row.name), f"[{color}]{fmt(row.delta, 'delta')}[/]"]
        table.add_row(*cells)
    return table


def _print_human(
    report: EvalReport,
    base: EvalReport | None,
    comparison: Comparison | None,
    out: Path | None,
    judged: JudgeResult | None = None,
) -> None:
    console = Console()
    console.print(_table(report, base))
    if report.truncated:
        console.print(f"[yellow]{report.truncated} rows truncated at {report.max_length} tokens[/]")
    for s in comparison.samples if comparison else []:
        console.print(f"\n[bold]Q:[/] {escape(s.question)}\n  reference: {escape(s.reference)}")
        console.print(f"  model:     {escape(s.model)}\n  baseline:  {escape(s.baseline)}")
    if not comparison:
        for s in report.samples[:3]:
            console.print(
                f"\n[bold]Q:[/] {escape(s.question)}\n  reference: {escape(s.reference)}\n  model:     {escape(s.prediction)}"
            )
    if judged:
        console.print()
        eval_judge.print_judge(console, judged)
    seconds = report.timing["total_s"] + (base.timing["total_s"] if base else 0)
    seconds += judged.summary.usage["seconds"] if judged else 0
    console.print(
        f"\n[dim]{seconds:.1f} s"
        + (f"; wrote {out / 'eval.json'} and {out / 'eval.md'}" if out else "")
        + "[/]"
    )
