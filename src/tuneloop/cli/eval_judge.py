"""`tuneloop eval ... --baseline OTHER --judge REF`: the flags' checks and the console table; thin,
the work is in tuneloop.evaluation.judge_eval. Split from cli/eval.py, which only calls these."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge_config import JudgeConfig
from tuneloop.evaluation.judge_eval import JudgeResult, load_judge_config, summary_lines

JUDGE_HELP = (
    "Judge the model's answers against --baseline's, pairwise in both orders: a model reference run "
    "by tuneloop's engine (e.g. smollm2-135m-instruct), or a YAML judge config (model, or base_url + "
    "model_name + api_key_env for an OpenAI-compatible server; rubric, max_tokens, cache, ...)."
)
RUBRIC_HELP = "With --judge: a text file saying what makes an answer better (replaces the default rubric)."


def judge_config(
    judge: str | None, rubric: Path | None, *, baseline: str | None, tasks: str | None
) -> JudgeConfig | None:
    """The judge the flags ask for, checked before anything runs (None: no --judge)."""
    if judge is None:
        if rubric is not None:
            raise TuneloopError("--judge-rubric needs --judge", hint="add --judge MODEL (or a judge YAML)")
        return None
    if tasks is not None:
        raise TuneloopError("--judge compares answers to --data questions, not --tasks", hint="drop one")
    if baseline is None:
        raise TuneloopError(
            "--judge compares the model's answers with a baseline's", hint="add --baseline MODEL"
        )
    return load_judge_config(judge, rubric)


def print_judge(console: Console, result: JudgeResult) -> None:
    table = Table(title=f"pairwise judge: {escape(result.summary.judge)}", title_justify="left")
    table.add_column("")
    table.add_column("model (a) vs baseline (b)")
    for what, value in summary_lines(result.summary):
        style = (
            "yellow"
            if "biased" in value or (what == "no readable verdict" and not value.startswith("0 "))
            else ""
        )
        table.add_row(what, f"[{style}]{escape(value)}[/]" if style else escape(value))
    console.print(table)
