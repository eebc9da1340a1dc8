"""`evaluate(model_ref, data)`: perplexity plus, for SFT data, generated answers scored against references.

Rows with `tools` are scored on tool-call accuracy too: the prompt is the row up to its final
assistant turn (rendered with the tools as the server renders them), the reply is parsed with the
model's tool-call parser (`models.tool_calls`, as the server parses it), and its calls are compared
with that turn's `tool_calls` (metrics.score_tool_calls); a final turn without calls expects none.

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
from tuneloop.evaluation.generate import generate_replies, prompt_and_reference, tool_prompt_and_reference
from tuneloop.evaluation.perplexity import perplexity, sft_token_labels, text_labels
from tuneloop.evaluation.rows import Kind, Row, read_rows, rows_from_dicts
from tuneloop.models import tool_calls
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
    pairs: list[tuple[list[dict[str, Any]], Any]] = []
    for row in rows:
        try:
            split = tool_prompt_and_reference if row.tools is not None else prompt_and_reference
            pairs.append(split(row.messages or []))
        except TuneloopError as e:
            raise row.error(e.message, e.hint or "") from None
    tools = [row.tools for row in rows]
    parser = _tool_parser(model, tokenizer) if any(t is not None for t in tools) else None
    replies = generate_replies(
        model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new, batch_size=batch_size, tools=tools
    )
    samples = []
    for row, (prompt, reference), reply in zip(rows, pairs, replies, strict=True):
        answer = row.meta.get("answer")
        sample_id = None if row.meta.get("id") is None else str(row.meta["id"])
        question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        if row.tools is None:
            scores = metrics.score(reply, reference, answer)
            samples.append(Sample(question, reference, reply, sample_id, answer, scores))
            continue
        assert parser is not None
        parsed = tool_calls.parse(reply, parser)
        names = [t["function"]["name"] for t in row.tools]
        scores = metrics.score_tool_calls(
            [c.openai() for c in parsed.tool_calls], reference.get("tool_calls") or [], names
        )
        if reference["content"].strip():  # a text part is scored as text
            scores.update(metrics.score(parsed.content or "", reference["content"], answer))
        samples.append(Sample(question, _reference_text(reference), reply, sample_id, answer, scores))
    return samples


def _tool_parser(model: Any, tokenizer: Any) -> str:
    """The tool-call format of the model, as the server chooses it."""
    name = tool_calls.detect_tool_parser(tokenizer, getattr(model.config, "model_type", None))
    if name is None:
        raise TuneloopError(
            "this model's chat template renders tools in a format no tool-call parser reads",
            hint=f"supported formats: {', '.join(sorted(tool_calls.PARSERS))}; evaluate tool rows on a model "
            "whose template uses one of them (or one without tool support, which gets the hermes format)",
        )
    return name


def _reference_text(reference: dict[str, Any]) -> str:
    """A reference turn as the report shows it: its text and its calls (name(arguments))."""
    calls = [
        f"{c['function']['name']}({c['function']['arguments']})" for c in reference.get("tool_calls") or []
    ]
    return " ".join([reference["content"], *calls]).strip()
