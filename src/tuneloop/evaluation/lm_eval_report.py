"""Writing general-task results: tasks.json (everything, every example) and tasks.md (the table).

One row per task and metric: the score with its standard error and confidence interval; with a
baseline, the baseline's too and the paired difference (candidate - baseline on the same examples)
with its interval, where the caller computed one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop.evaluation.lm_eval_harness import MetricScore, PairedTask, TasksReport


@dataclass
class DiffInterval:
    """candidate - baseline on the same examples, with its interval (computed by the caller)."""

    estimate: float
    low: float | None
    high: float | None
    method: str
    p_value: float | None = None


@dataclass
class SummaryRow:
    task: str
    metric: str
    n: int
    primary: bool
    model: MetricScore
    baseline: MetricScore | None = None
    diff: DiffInterval | None = None


def summary_rows(
    report: TasksReport, baseline: TasksReport | None = None, diffs: dict[str, DiffInterval] | None = None
) -> list[SummaryRow]:
    """Every task's metrics, the primary one first; `diffs` (task -> interval) is for primaries."""
    rows = []
    for name, task in report.tasks.items():
        for metric in sorted(task.metrics, key=lambda m: m != task.primary):
            base = baseline.tasks.get(name) if baseline else None
            primary = metric == task.primary
            rows.append(
                SummaryRow(
                    name,
                    metric,
                    task.n,
                    primary,
                    task.metrics[metric],
                    base.metrics.get(metric) if base else None,
                    (diffs or {}).get(name) if primary else None,
                )
            )
    return rows


def score_text(score: MetricScore | None, interval: bool = True) -> str:
    if score is None:
        return "-"
    text = f"{score.value:.3f}"
    if score.stderr is not None:
        text += f" ± {score.stderr:.3f}"
    if interval and score.low is not None and score.high is not None:
        text += f" [{score.low:.3f}, {score.high:.3f}]"
    return text


def diff_text(diff: DiffInterval | None) -> str:
    if diff is None:
        return "-"
    text = f"{diff.estimate:+.3f}"
    if diff.low is not None and diff.high is not None:
        text += f" [{diff.low:+.3f}, {diff.high:+.3f}]"
    return text


def to_json(
    report: TasksReport,
    baseline: TasksReport | None = None,
    paired: dict[str, PairedTask] | None = None,
    diffs: dict[str, DiffInterval] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": report.to_dict()}
    if baseline is not None:
        out["baseline"] = baseline.to_dict()
    if paired is not None:
        out["paired"] = {
            name: {
                "metric": p.metric,
                "n": p.n,
                "mean_difference": p.mean_difference,
                "interval": asdict(diffs[name]) if diffs and name in diffs else None,
                "doc_ids": p.doc_ids,
                "ids": p.ids,
                "baseline": p.base,
                "candidate": p.candidate,
            }
            for name, p in paired.items()
        }
    return out


def to_markdown(
    report: TasksReport, baseline: TasksReport | None = None, diffs: dict[str, DiffInterval] | None = None
) -> str:
    level = f"{report.confidence:.0%}"
    lines = [
        f"# General tasks: `{report.model}`",
        "",
        f"lm-evaluation-harness {report.lm_eval_version}, backend `{report.backend}`"
        + (f", first {report.limit} examples per task" if report.limit else "")
        + f". Scores ± standard error [{level} interval]; * marks each task's primary metric.",
        "",
    ]
    if baseline is None:
        lines += ["| task | metric | n | score |", "|---|---|---:|---:|"]
    else:
        lines += [
            f"| task | metric | n | score | baseline (`{baseline.model}`) | difference [{level}] |",
            "|---|---|---:|---:|---:|---:|",
        ]
    for r in summary_rows(report, baseline, diffs):
        cells = [r.task, r.metric + (" *" if r.primary else ""), str(r.n), score_text(r.model)]
        if baseline is not None:
            cells += [score_text(r.baseline), diff_text(r.diff)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_task_reports(
    out: Path,
    report: TasksReport,
    baseline: TasksReport | None = None,
    paired: dict[str, PairedTask] | None = None,
    diffs: dict[str, DiffInterval] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(report, baseline, paired, diffs)
    (out / "tasks.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "tasks.md").write_text(to_markdown(report, baseline, diffs), encoding="utf-8")
