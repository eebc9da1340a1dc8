"""Side by side: a model against a baseline on the same data — metrics, deltas and sample replies."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.evaluation.harness import EvalReport

# Lower is better for these; every other metric is better higher.
LOWER_IS_BETTER = {"perplexity", "nll"}
# Bookkeeping, not quality: shown per model but not compared.
NOT_COMPARED = {"scored_tokens"}


@dataclass
class MetricRow:
    name: str
    model: float | None
    baseline: float | None
    delta: float | None  # model - baseline
    better: bool | None  # did the model improve on the baseline?


@dataclass
class SampleRow:
    question: str
    reference: str
    model: str
    baseline: str


@dataclass
class Comparison:
    model: str
    baseline: str
    data: str
    n: int
    metrics: list[MetricRow]
    samples: list[SampleRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_rows(model: dict[str, float], baseline: dict[str, float] | None) -> list[MetricRow]:
    """One row per metric either side has, in the model's order."""
    baseline = baseline or {}
    rows = []
    for name in dict.fromkeys([*model, *baseline]):
        a, b = model.get(name), baseline.get(name)
        if a is None or b is None or name in NOT_COMPARED:
            rows.append(MetricRow(name, a, b, None, None))
            continue
        better = (a < b if name in LOWER_IS_BETTER else a > b) if a != b else None
        rows.append(MetricRow(name, a, b, a - b, better))
    return rows


def compare(model: EvalReport, baseline: EvalReport, *, n_samples: int = 3) -> Comparison:
    """Metrics of both with deltas, and the first few samples answered by both."""
    samples = [
        SampleRow(m.question, m.reference, m.prediction, b.prediction)
        for m, b in zip(model.samples[:n_samples], baseline.samples[:n_samples], strict=False)
    ]
    return Comparison(
        model.model,
        baseline.model,
        model.data,
        model.n,
        metric_rows(model.metrics, baseline.metrics),
        samples,
    )
