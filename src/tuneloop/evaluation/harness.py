"""`evaluate(model_ref, data)`: perplexity plus, for SFT data, generated answers scored against references.

The CLI and the trainer (at the end of a run) both call this. The trainer may pass the model and
tokenizer it already holds, and its validation rows as dicts, to skip loading anything.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.evaluation import metrics
from tuneloop.evaluation.generate import generate_replies, prompt_and_reference
from tuneloop.evaluation.perplexity import perplexity, sft_token_labels, text_labels
from tuneloop.evaluation.rows import Kind, Row, read_rows, rows_from_dicts
from tuneloop.models.load import load_reference

MAX_LENGTH_CAP = 2048  # longer rows are truncated (and counted): CPU memory, not model limits


@dataclass
class Sample:
    question: str
    reference: str
    prediction: str
    id: str | None = None
    answer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    model: str
    data: str
    kind: Kind
    n: int
    metrics: dict[str, float]
    samples: list[Sample]
    timing: dict[str, float]
    truncated: int = 0
    max_length: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model_ref: str | Path,
    data: str | Path | list[dict[str, Any]],
    *,
    max_samples: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    device: str = "auto",
    max_length: int | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> EvalReport:
    """Evaluate a model reference (folder, store name, hub id, adapter folder) on an SFT or text set."""
    started = time.perf_counter()
    rows, kind = rows_from_dicts(data) if isinstance(data, list) else read_rows(data)
    rows = rows[:max_samples] if max_samples else rows
    if model is None or tokenizer is None:
        loaded = load_reference(model_ref, device)
        model, tokenizer = loaded.model, loaded.tokenizer
    timing = {"load_s": time.perf_counter() - started}
    max_length = max_length or _max_length(model, tokenizer)

    t = time.perf_counter()
    examples, truncated = _label_rows(rows, kind, tokenizer, max_length)
    ppl = perplexity(model, examples, batch_size=batch_size, truncated=truncated)
    timing["perplexity_s"] = time.perf_counter() - t
    scores: dict[str, float] = ppl.as_metrics()
    samples: list[Sample] = []
    if kind == "sft":
        t = time.perf_counter()
        samples = _generate_samples(rows, model, tokenizer, max_new_tokens, batch_size)
        timing["generate_s"] = time.perf_counter() - t
        scores.update(metrics.mean_scores(s.scores for s in samples))
    timing["total_s"] = time.perf_counter() - started
    return EvalReport(
        str(model_ref), rows[0].file, kind, len(rows), scores, samples, timing, truncated, max_length
    )


def _max_length(model: Any, tokenizer: Any) -> int:
    limits = [MAX_LENGTH_CAP, getattr(model.config, "max_position_embeddings", None) or MAX_LENGTH_CAP]
    if 0 < (getattr(tokenizer, "model_max_length", 0) or 0) < 10**9:  # HF's "no limit" is a huge int
        limits.append(tokenizer.model_max_length)
    return min(limits)


def _label_rows(rows: list[Row], kind: Kind, tokenizer: Any, max_length: int) -> tuple[list, int]:
    examples, truncated = [], 0
    for row in rows:
        try:
            if kind == "sft":
                ids, labels = sft_token_labels(tokenizer, row.messages or [], tools=row.tools)
            else:
                ids, labels = text_labels(tokenizer, row.text or "", 10**9)
        except TuneloopError as e:  # the message gains the file and line it is about
            raise row.error(e.message, e.hint or "") from None
        truncated += len(ids) > max_length
        examples.append((ids[:max_length], labels[:max_length]))
    return examples, truncated


def _generate_samples(
    rows: list[Row], model: Any, tokenizer: Any, max_new: int, batch_size: int
) -> list[Sample]:
    pairs = []
    for row in rows:
        try:
            pairs.append(prompt_and_reference(row.messages or []))
        except TuneloopError as e:
            raise row.error(e.message, e.hint or "") from None
    replies = generate_replies(
        model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new, batch_size=batch_size
    )
    samples = []
    for row, (prompt, reference), reply in zip(rows, pairs, replies, strict=True):
        answer = row.meta.get("answer")
        sample_id = None if row.meta.get("id") is None else str(row.meta["id"])
        scores = metrics.score(reply, reference, answer)
        samples.append(Sample(prompt[-1]["content"], reference, reply, sample_id, answer, scores))
    return samples
