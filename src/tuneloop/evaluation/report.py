"""Writing evaluation results: eval.json (everything) and eval.md (a table and a few samples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.evaluation.compare import Comparison, metric_rows
from tuneloop.evaluation.harness import EvalReport
from tuneloop.evaluation.judge_eval import JudgeResult, markdown_section

N_MARKDOWN_SAMPLES = 3


def to_json(
    report: EvalReport,
    baseline: EvalReport | None = None,
    comparison: Comparison | None = None,
    judge: JudgeResult | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": report.to_dict()}
    if baseline is not None:
        out["baseline"] = baseline.to_dict()
    if comparison is not None:
        out["comparison"] = comparison.to_dict()
    if judge is not None:
        out["judge"] = judge.to_dict()
    return out


def fmt(value: float | None, name: str = "") -> str:
    if value is None:
        return "-"
    if name == "scored_tokens":
        return f"{value:.0f}"
    return f"{value:+.4f}" if name == "delta" else f"{value:.4f}"


def _cell(text: str, limit: int = 200) -> str:
    # A Markdown table cell is one line without pipes.
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_markdown(
    report: EvalReport, baseline: EvalReport | None = None, judge: JudgeResult | None = None
) -> str:
    lines = [f"# Evaluation of `{report.model}`", "", f"Data: `{report.data}` ({report.n} {report.kind} rows"]
    lines[-1] += f", {report.truncated} truncated at {report.max_length} tokens)" if report.truncated else ")"
    lines += ["", *_metrics_table(report, baseline), ""]
    if judge is not None and baseline is not None:
        lines += markdown_section(judge, report.model, baseline.model)
    lines += _samples_section(report, baseline)
    return "\n".join(lines) + "\n"


def _metrics_table(report: EvalReport, baseline: EvalReport | None) -> list[str]:
    if baseline is None:
        rows = ["| metric | model |", "|---|---:|"]
        return rows + [f"| {k} | {fmt(v, k)} |" for k, v in report.metrics.items()]
    rows = [f"| metric | model | baseline (`{baseline.model}`) | delta |", "|---|---:|---:|---:|"]
    for r in metric_rows(report.metrics, baseline.metrics):
        rows.append(
            f"| {r.name} | {fmt(r.model, r.name)} | {fmt(r.baseline, r.name)} | {fmt(r.delta, 'delta')} |"
        )
    return rows


def _samples_section(report: EvalReport, baseline: EvalReport | None) -> list[str]:
    if not report.samples:
        return []
    lines = ["## Sample generations", ""]
    others = baseline.samples if baseline else []
    for i, s in enumerate(report.samples[:N_MARKDOWN_SAMPLES]):
        lines += [
            f"**Q:** {_cell(s.question)}",
            "",
            f"- reference: {_cell(s.reference)}",
            f"- model: {_cell(s.prediction)}",
        ]
        if i < len(others):
            lines.append(f"- baseline: {_cell(others[i].prediction)}")
        lines.append("")
    return lines


def write_reports(
    out_dir: str | Path,
    report: EvalReport,
    baseline: EvalReport | None = None,
    comparison: Comparison | None = None,
    judge: JudgeResult | None = None,
) -> tuple[Path, Path]:
    """Write eval.json and eval.md into `out_dir` (created) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(
        json.dumps(to_json(report, baseline, comparison, judge), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    md_path.write_text(to_markdown(report, baseline, judge), encoding="utf-8")
    return json_path, md_path
