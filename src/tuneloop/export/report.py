"""The export report: before/after measurements, ratios and the quality verdict, as JSON and Markdown.

Written next to the export (`export_report.json`, `export_report.md`) and printed as a table.
Ratios are after/before for sizes and times (0.5 = half), so "smaller/faster" is below 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.export.measure import Measurement

REPORT_JSON, REPORT_MD = "export_report.json", "export_report.md"
GGUF_NOTE = (
    "The GGUF was measured by loading it back with transformers' GGUF loader, which dequantizes it to "
    "float: perplexity and answers are the file's, load time and latency are PyTorch's, not llama.cpp's."
)
ROWS = [  # (label, field, unit)
    ("size on disk", "size_bytes", "MB"),
    ("load time", "load_s", "s"),
    ("time to first token", "ttft_s", "ms"),
    ("time per output token", "per_token_s", "ms"),
    ("perplexity", "perplexity", ""),
    ("task score", "task_score", ""),
    ("linear-layer sparsity", "sparsity", "%"),
]


@dataclass
class QualityCheck:
    perplexity_increase: float  # relative: (after - before) / before
    task_drop: float | None  # relative: (before - after) / before; None without task scores
    max_drop: float | None
    passed: bool
    # share of the latency prompts whose greedy tokens are identical before and after (not gated:
    # a lossy export may differ and still be good; a lossless one must not)
    greedy_agreement: float | None = None

    @classmethod
    def of(cls, before: Measurement, after: Measurement, max_drop: float | None) -> QualityCheck:
        increase = (after.perplexity - before.perplexity) / before.perplexity
        drop = None
        if before.task_score is not None and after.task_score is not None:
            drop = (before.task_score - after.task_score) / before.task_score if before.task_score else 0.0
        worst = max(increase, drop or 0.0)
        pairs = list(zip(before.greedy_tokens, after.greedy_tokens, strict=False))
        agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
        return cls(increase, drop, max_drop, max_drop is None or worst <= max_drop, agreement)


@dataclass
class ExportReport:
    source: str
    output: str
    steps: list[dict[str, Any]]
    before: Measurement
    after: Measurement
    quality: QualityCheck
    environment: dict[str, str] = field(default_factory=dict)
    registered: dict[str, Any] | None = None

    def ratios(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for _, name, _ in ROWS[:5]:
            a, b = getattr(self.after, name), getattr(self.before, name)
            out[name] = a / b if a is not None and b else None
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["before"], data["after"] = self.before.to_dict(), self.after.to_dict()
        data["ratios"] = self.ratios()
        return data

    def write(self, folder: Path) -> None:
        (folder / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        (folder / REPORT_MD).write_text(markdown(self))


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MB":
        return f"{value / 1e6:,.1f} MB"
    if unit == "ms":
        return f"{value * 1e3:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "%":
        return f"{value * 100:.1f}%"
    return f"{value:.4g}"


def table_rows(report: ExportReport) -> list[tuple[str, str, str, str]]:
    """(label, before, after, after/before) for each measured quantity."""
    ratios = report.ratios()
    rows = []
    for label, name, unit in ROWS:
        before, after = getattr(report.before, name), getattr(report.after, name)
        if before is None and after is None:
            continue
        ratio = ratios.get(name)
        rows.append((label, fmt(before, unit), fmt(after, unit), "-" if ratio is None else f"{ratio:.3f}x"))
    return rows


def markdown(report: ExportReport) -> str:
    steps = " → ".join(s["step"] for s in report.steps)
    lines = [
        f"# Export report: {report.source} → {report.output}",
        "",
        f"Steps: {steps}. Device: {report.after.device}. Measured in the same run, batch 1.",
        "",
        "| | before | after | after/before |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(report)],
        "",
        verdict(report),
        "",
        *([GGUF_NOTE, ""] if report.after.format == "gguf" else []),
        "Environment: " + ", ".join(f"{k} {v}" for k, v in report.environment.items()),
    ]
    return "\n".join(lines) + "\n"


def verdict(report: ExportReport) -> str:
    q = report.quality
    text = f"Perplexity change {q.perplexity_increase:+.2%}"
    if q.task_drop is not None:
        text += f", task score drop {q.task_drop:+.2%}"
    if q.greedy_agreement is not None:
        text += f", greedy answers identical to the source on {q.greedy_agreement:.0%} of the prompts"
    if q.max_drop is None:
        return text + " (no --max-quality-drop limit)."
    return text + (
        f" — within the limit of {q.max_drop:.2%}."
        if q.passed
        else f" — over the limit of {q.max_drop:.2%}: refused."
    )
