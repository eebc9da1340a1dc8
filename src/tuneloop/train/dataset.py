"""Training examples: dataset rows -> token ids and labels, with truncation/dropping counted and packing.

Rows follow the dataset contract of `tuneloop data prepare`: SFT rows are OpenAI `messages`,
pretraining rows are `{"text": ...}`, preference rows are `{"prompt", "chosen", "rejected"}`, unpaired
rows (KTO) are `{"prompt", "completion", "label"}` as in TRL.
SFT labels cover assistant turns only (their text and tool calls; tool results and user turns are
masked, as TRL's assistant-only loss), using the model's own chat template with the row's `tools`
rendered as the server renders them (`models.chat`) — the same masking the evaluator uses
(`tuneloop.evaluation.perplexity.sft_token_labels`), so train, eval and serving agree.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.data.layout import Split, is_url, open_split
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.perplexity import render_chat, sft_token_labels
from tuneloop.evaluation.rows import (
    KIND_NAMES,
    RowKind,
    as_messages,
    check_row,
    jsonl_lines,
    parse_json_line,
    row_kind,
)
from tuneloop.models.loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
ROW_KINDS: dict[str, RowKind] = {
    "sft": "sft",
    "pretrain": "text",
    "dpo": "preference",
    "kto": "unpaired",
}  # objective -> rows


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None  # set for packed sequences: restarts at 0 per segment
    segments: list[int] | None = None  # lengths of the packed pieces


@dataclass
class PairExample:
    chosen: Example
    rejected: Example


@dataclass
class KtoExample:
    """One unpaired answer (KTO), kept as prompt and completion so that the trainer can also score this
    prompt with another example's completion (the mismatched pairs of KTO's KL estimate)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_labels: list[int]  # the completion's ids, IGNORE where not the model's to predict
    label: bool  # desirable (thumbs up) or undesirable
    max_length: int

    def sequence(self, completion_of: KtoExample | None = None) -> Example:
        """Prompt + completion (this example's, or `completion_of`'s), cut at max_length."""
        other = completion_of or self
        ids = (self.prompt_ids + other.completion_ids)[: self.max_length]
        labels = ([IGNORE] * len(self.prompt_ids) + other.completion_labels)[: self.max_length]
        return Example(ids, labels)


@dataclass
class Prepared:
    examples: list[Any]
    counts: Counter = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return sum(len(_first(e).input_ids) for e in self.examples)


def input_length(e: Any) -> int:
    """Input tokens of an example (of its chosen side for a preference pair)."""
    return len(_first(e).input_ids)


def _first(e: Any) -> Example:
    if isinstance(e, KtoExample):
        return e.sequence()
    return e.chosen if isinstance(e, PairExample) else e


def dataset_files(path: str, val_path: str | None) -> tuple[Path | Split, Path | Split | None]:
    """(train, val or None) for a dataset folder or URL (the shards its manifest lists, or the
    folder's train.jsonl / val.jsonl) or a single .jsonl file."""
    p = Path(path).expanduser()
    if is_url(path) or p.is_dir():
        location = path if is_url(path) else str(p)
        train = open_split(location, "train")
        if train is None:
            raise TuneloopError(
                f"dataset '{location}' has neither train/ shards with a manifest.json nor a train.jsonl",
                hint="run `tuneloop data prepare` first",
            )
        if val_path:
            return _single(train), _val_file(val_path)
        val = open_split(location, "val")
        return _single(train), _single(val) if val is not None else None
    if not p.is_file():
        raise TuneloopError(
            f"data.path '{path}' does not exist", hint="give a dataset folder or URL, or a .jsonl file"
        )
    return p, _val_file(val_path) if val_path else None


def _single(split: Split) -> Path | Split | None:
    """A local single-file split stays a Path (as before the sharded layout); an empty one is None."""
    if split.location is not None or is_url(split.files[0]):
        return split
    file = Path(split.files[0])
    return file if split.name == "train" or file.stat().st_size > 0 else None


def _val_file(val_path: str) -> Path | None:
    """data.val_path as given; an empty file means "no validation" (the loop writes one for an
    objective it holds out nothing for, so train does not fall back to the dataset's val split)."""
    val = Path(val_path).expanduser()
    if not val.is_file():
        raise TuneloopError(f"data.val_path '{val_path}' does not exist")
    return val if val.stat().st_size > 0 else None


def _lines(source: Path | Split) -> Iterator[tuple[str, int, str]]:
    """(file, line number, line): a sharded split streams its shards in order, naming each."""
    if isinstance(source, Split):
        return source.lines()
    return ((str(source), n, line) for n, line in jsonl_lines(source))


def read_rows(path: Path | Split, objective: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file or of a dataset's shards, each checked by the row check `tuneloop eval`
    uses (`check_row`): a broken line, a row of the wrong kind or a bad message is an error naming
    file (shard) and line."""
    rows: list[dict[str, Any]] = []
    for where, lineno, line in _lines(path):
        rows.append(parse_row(where, lineno, line, objective))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise TuneloopError(f"{path} has no rows", hint="check that `tuneloop data prepare` kept any data")
    return rows


def parse_row(where: str, lineno: int, line: str, objective: str) -> dict[str, Any]:
    """One JSONL line as a checked row of the kind `objective` trains on (errors name file and line)."""
    expected = ROW_KINDS[objective]
    row = parse_json_line(line, where, lineno)
    found = row_kind(row)
    if found is not None and found != expected:
        raise TuneloopError(
            f"{where}:{lineno}: objective '{objective}' needs {KIND_NAMES[expected]} rows, but the "
            f"file holds {KIND_NAMES[found]} rows",
            hint="prepare the data with the matching --kind, or set objective= to match the data",
        )
    check_row(row, where, lineno, kinds=(expected,))
    return row


def tokenize(
    rows: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    objective: str,
    max_length: int,
    overlong: str,
) -> Prepared:
    """Token ids + labels for every row; overlong rows are truncated or dropped, and counted."""
    out = Prepared([])
    for row in rows:
        if objective == "dpo":
            ex = _pair(tokenizer, row, max_length, overlong, out.counts)
        elif objective == "kto":
            ex = _unpaired(tokenizer, row, max_length, overlong, out.counts)
        else:
            ids, labels = _sft(tokenizer, row) if objective == "sft" else _text(tokenizer, row)
            ex = _fit(Example(ids, labels), max_length, overlong, out.counts)
        if ex is None:
            continue
        if all(label == IGNORE for label in _first(ex).labels):
            out.counts["dropped_no_labels"] += 1
            continue
        out.examples.append(ex)
        if isinstance(ex, KtoExample):
            out.counts["desirable" if ex.label else "undesirable"] += 1
    out.counts["examples"] = len(out.examples)
    return out


def _sft(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    return sft_token_labels(tokenizer, row["messages"], tools=row.get("tools"))


def _text(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]  # the model learns where a document ends
    return ids, list(ids)


def _fit(ex: Example, max_length: int, overlong: str, counts: Counter) -> Example | None:
    if len(ex.input_ids) <= max_length:
        return ex
    if overlong == "drop":
        counts["dropped_overlong"] += 1
        return None
    counts["truncated"] += 1
    return Example(ex.input_ids[:max_length], ex.labels[:max_length])


def _pair(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], max_length: int, overlong: str, counts: Counter
) -> PairExample | None:
    prompt = as_messages(row.get("prompt", []), "user")
    sides = []
    for key in ("chosen", "rejected"):
        if key not in row:
            raise TuneloopError(
                f"preference row without '{key}'", hint="rows need prompt, chosen and rejected"
            )
        ids, labels = sft_token_labels(
            tokenizer, prompt + as_messages(row[key], "assistant"), tools=row.get("tools")
        )
        sides.append(_fit(Example(ids, _last_span_only(labels)), max_length, overlong, counts))
    if sides[0] is None or sides[1] is None:
        return None
    return PairExample(sides[0], sides[1])


def _unpaired(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], max_length: int, overlong: str, counts: Counter
) -> KtoExample | None:
    """Prompt and completion ids as TRL's KTOTrainer splits them (where the prompt rendered with the
    generation prompt stops being a prefix of the whole conversation); labels as for SFT: the
    completion's assistant turns through their end-of-turn token."""
    prompt = as_messages(row["prompt"], "user")
    tools = row.get("tools")
    ids, labels = sft_token_labels(
        tokenizer, prompt + as_messages(row["completion"], "assistant"), tools=tools
    )
    text = render_chat(tokenizer, prompt, True, tools)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    split = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b),
        min(len(prompt_ids), len(ids)),
    )
    if len(ids) > max_length:
        if overlong == "drop":
            counts["dropped_overlong"] += 1
            return None
        counts["truncated"] += 1
    return KtoExample(ids[:split], ids[split:], labels[split:], bool(row["label"]), max_length)


def _last_span_only(labels: list[int]) -> list[int]:
    """Keep only the final assistant turn's labels: earlier assistant turns belong to the prompt."""
    end = max((i for i, t in enumerate(labels) if t != IGNORE), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return [IGNORE] * max(start, 0) + labels[max(start, 0) :] if end >= 0 else labels


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Greedily pack consecutive examples into sequences of at most `max_length` tokens.

    Each piece keeps its own positions (restarting at 0) and `segments`; the collator builds a
    block-diagonal mask from them, or with `padding_free` hands them to the varlen attention
    (`tuneloop.train.attention`), so packed examples never attend to each other: the loss equals
    the unpacked loss.
    """
    packed: list[Example] = []
    current: list[Example] = []
    for ex in examples:
        if current and sum(len(e.input_ids) for e in current) + len(ex.input_ids) > max_length:
            packed.append(_join(current))
            current = []
        current.append(ex)
    if current:
        packed.append(_join(current))
    return packed


def _join(parts: list[Example]) -> Example:
    ids = [t for p in parts for t in p.input_ids]
    # A piece's first label is never predicted when unpacked (the shift drops it); masking it here
    # keeps the previous piece's last token from learning to predict the next piece.
    labels = [t for p in parts for t in [IGNORE, *p.labels[1:]]]
    positions = [i for p in parts for i in range(len(p.input_ids))]
    return Example(ids, labels, positions, [len(p.input_ids) for p in parts])


def _tokenize_shard(args: tuple[list[dict[str, Any]], str, str, int, str]) -> Prepared:
    rows, tokenizer_path, objective, max_length, overlong = args
    return tokenize(rows, load_tokenizer(tokenizer_path), objective, max_length, overlong)


def tokenize_parallel(
    rows: list[dict[str, Any]],
    tokenizer_path: str,
    objective: str,
    max_length: int,
    overlong: str,
    workers: int,
) -> Prepared:
    """`tokenize` over `workers` processes (contiguous shards, so the order and the result are the same)."""
    size = -(-len(rows) // workers)
    shards = [
        (rows[i : i + size], tokenizer_path, objective, max_length, overlong)
        for i in range(0, len(rows), size)
    ]
    # spawn: a forked child would inherit torch's thread pools and the tokenizer's Rust threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_tokenize_shard, shards))
    out = Prepared([e for p in parts for e in p.examples])
    for p in parts:
        out.counts.update(p.counts)
    out.counts["examples"] = len(out.examples)
    return out
