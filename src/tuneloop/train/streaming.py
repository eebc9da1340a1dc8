"""Training rows streamed from a dataset's files: read lazily, shuffled in windows, tokenized and
packed on the fly; each partition sees its share of every epoch exactly once; resumable from a
three-number position.

The order of epoch `e` for partition `p` of `P` (P = processes x data-loader workers):
  1. the dataset's files in manifest order, cut to data.max_train_examples rows, then shuffled with
     a seed of (seed, e) when the rows span more than one window of every partition (inside one
     window the window's own shuffle already covers every row);
  2. row `g` of that concatenation belongs to partition `g % P`: disjoint, and together every row
     once (shares differ by at most one row, so the processes' epochs stay in step);
  3. the partition's rows in windows of `shuffle_buffer` rows: each window is tokenized and packed
     exactly as the in-memory path does (`dataset.tokenize`, `dataset.pack`) and its examples are
     permuted with a seed of (seed, e, window). Window 0 uses `batching.StepPlan`'s seed, so a
     dataset inside one window on one process gives the very batches of the in-memory path.

A position is (epoch, window, examples taken from that window). Resuming skips whole files by the
manifest's row counts, reads lines up to the window, rebuilds that one window and skips the taken
examples: at most one window is re-tokenized, nothing before it is parsed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuneloop.data.layout import Split, is_url
from tuneloop.errors import TuneloopError
from tuneloop.train.dataset import pack, parse_row, tokenize

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# data.streaming=auto streams a sharded dataset above either size (by the manifest's counts)
AUTO_ROWS = 200_000
AUTO_BYTES = 1 << 30


def as_split(source: Path | Split) -> Split:
    """A single .jsonl file as a one-file split, so both layouts stream the same way."""
    return source if isinstance(source, Split) else Split("train", (str(source),), None)


def is_large(source: Path | Split, limit: int | None) -> bool:
    """Whether data.streaming=auto streams this dataset: a URL, or a sharded one over the thresholds."""
    split = as_split(source)
    if is_url(split.files[0]) or (split.location is not None and is_url(split.location)):
        return True
    rows = min(split.rows, limit) if split.rows is not None and limit else split.rows
    big_bytes = split.bytes is not None and split.bytes > AUTO_BYTES and not limit
    return (rows is not None and rows > AUTO_ROWS) or big_bytes


@dataclass
class Position:
    epoch: int = 0
    window: int = 0
    taken: int = 0  # examples of this window already handed out


@dataclass(frozen=True)
class Tokenizing:
    """How rows become examples: the settings the in-memory path uses too."""

    tokenizer: PreTrainedTokenizerBase
    objective: str
    max_length: int
    overlong: str
    packing: bool


class RowFiles:
    """One dataset's training rows as files with known (or unknown) row counts, cut to a limit."""

    def __init__(self, source: Path | Split, limit: int | None = None):
        self.split = as_split(source)
        self.limit = limit
        counts = self.split.file_rows or (None,) * len(self.split.files)
        if len(self.split.files) == 1 and self.split.rows is not None:
            counts = (self.split.rows,)
        self.takes: list[int | None] = []  # rows to take from each file (None: all, count unknown)
        left = limit
        for n in counts:
            if left is not None and n is not None:
                n = min(n, left)
                left -= n
            self.takes.append(n)
        self.known = all(n is not None for n in self.takes)

    def total(self) -> int:
        """Rows in one epoch; counted by reading the files where the manifest has no counts."""
        if self.known:
            return sum(n for n in self.takes if n is not None)
        n = sum(1 for _ in self.lines(0, shuffle=False))
        return min(n, self.limit) if self.limit else n

    def lines(self, skip: int, shuffle: bool, seed: str = "") -> Iterator[tuple[str, int, str]]:
        """(file, line number, line) of the rows from row `skip` on, in this epoch's file order."""
        order = list(range(len(self.split.files)))
        if shuffle and self.known:
            random.Random(seed).shuffle(order)
        passed = 0  # rows of the epoch passed, skipped or given: the limit for files without counts
        for i in order:
            take = self.takes[i]
            if take is not None and skip >= take:
                skip -= take
                passed += take
                continue
            if take == 0:
                continue
            n = 0
            for item in self.split.file_lines(i):
                if (take is not None and n >= take) or (self.limit and passed >= self.limit):
                    break
                n += 1
                passed += 1
                if skip:
                    skip -= 1
                    continue
                yield item


class ShardStream(torch.utils.data.IterableDataset):
    """Partition `part` of `parts` of one dataset's examples, epoch after epoch, without end.

    In a torch DataLoader with workers, each worker takes partition `part * workers + worker`
    of `parts * workers`, so processes and workers share nothing and together cover every row.
    """

    def __init__(
        self,
        files: RowFiles,
        how: Tokenizing,
        seed: int,
        buffer: int,
        part: int = 0,
        parts: int = 1,
    ):
        super().__init__()
        self.files, self.how, self.seed, self.buffer = files, how, seed, buffer
        self.part, self.parts = part, parts
        self.position = Position()
        self.counts: Counter = Counter()  # tokenize's counts (truncated, dropped_...) over the windows built
        self._window: list[Any] | None = None
        self._window_rows = 0
        self._epoch_had_examples = False

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        stream = self
        if info is not None and info.num_workers > 1:
            stream = ShardStream(
                self.files,
                self.how,
                self.seed,
                self.buffer,
                self.part * info.num_workers + info.id,
                self.parts * info.num_workers,
            )
        while True:
            yield stream.next()

    def next(self) -> Any:
        """The next example (moving to the next window, or epoch, when this one is used up)."""
        while True:
            if self._window is None:
                self._build()
            assert self._window is not None
            if self.position.taken < len(self._window):
                self.position.taken += 1
                return self._window[self.position.taken - 1]
            self.position = Position(self.position.epoch, self.position.window + 1, 0)
            self._window = None

    def state(self) -> dict[str, int]:
        return asdict(self.position)

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a position `state()` gave (the window is rebuilt on the next example)."""
        self.position = Position(**state)
        self._window = None
        self._epoch_had_examples = self.position.window > 0 or self.position.taken > 0

    def examples_per_row(self) -> float:
        """Examples per row in this partition's current window (packing and dropping change it)."""
        if self._window is None:
            self._build()
        return len(self._window or []) / max(1, self._window_rows)

    def _build(self) -> None:
        p = self.position
        rows = self._rows(p.epoch, p.window)
        if not rows:
            if p.window == 0 or not self._epoch_had_examples:
                self._empty(p.epoch)
            self.position = Position(p.epoch + 1, 0, 0)
            self._epoch_had_examples = False
            rows = self._rows(p.epoch + 1, 0)
            if not rows:
                self._empty(p.epoch + 1)
        h = self.how
        prepared = tokenize(rows, h.tokenizer, h.objective, h.max_length, h.overlong)
        self.counts.update({k: v for k, v in prepared.counts.items() if k != "examples"})
        examples = pack(prepared.examples, h.max_length) if h.packing else prepared.examples
        order = list(range(len(examples)))
        random.Random(self._seed(self.position.epoch, self.position.window)).shuffle(order)
        self._window = [examples[i] for i in order]
        self._window_rows = len(rows)
        self._epoch_had_examples |= bool(examples)

    def _seed(self, epoch: int, window: int) -> int | str:
        # window 0: batching.StepPlan's seed, so one window on one process gives the in-memory batches
        return self.seed * 1_000_003 + epoch if window == 0 else f"{self.seed}:{epoch}:{window}"

    def _rows(self, epoch: int, window: int) -> list[dict[str, Any]]:
        """The parsed, checked rows of `window` of this partition in `epoch` (empty past the end)."""
        span = self.buffer * self.parts  # rows of the epoch that one window of every partition covers
        shuffle = self.files.known and self.files.total() > span
        lines = self.files.lines(window * span, shuffle, f"files:{self.seed}:{epoch}")
        rows: list[dict[str, Any]] = []
        for g, (where, lineno, line) in enumerate(lines):
            if g >= span:
                break
            if g % self.parts == self.part:
                rows.append(parse_row(where, lineno, line, self.how.objective))
        return rows

    def _empty(self, epoch: int) -> None:
        raise TuneloopError(
            f"{self.files.split}: partition {self.part} of {self.parts} (processes x workers) got no "
            f"training examples in epoch {epoch} (counts: {dict(self.counts)})",
            hint="the dataset has fewer usable rows than processes, or every row was dropped: check "
            "data.max_length / data.overlong, or use fewer processes",
        )
