"""A streamed run's examples made ahead in torch DataLoader worker processes (num_workers >= 1), so
reading, JSON parsing, tokenizing and packing leave the training loop's critical path.

Each of a process's W workers draws from its own Mixture over partition `rank * W + slot` of
`world * W` of every dataset. The DataLoader hands out its workers' items in turn (worker 0, 1, ...,
W-1, 0, ...) and no worker runs out (its streams loop over epochs), so the order is fixed by the
run's settings. Workers run ahead by the prefetch; the checkpoint keeps what the TRAINER consumed:
every item carries its worker's mixture state after drawing it, so the position is each slot's
state at its last consumed item plus the slot whose turn is next. A resumed run gives worker `i`
slot `(i + next) % W`, so the turns go on where they stopped.

With W = 1 the partition and order are the in-process stream's, so a checkpoint moves between
num_workers 0 and 1 exactly; another W partitions the rows differently (segments.py makes a
num_workers >= 2 shape a streamed run; mixture.positions restarts the window on a change).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tuneloop.errors import TuneloopError
from tuneloop.train.mixture import Entry, Mixture, fresh_state, positions
from tuneloop.train.streaming import RowFiles, ShardStream, Tokenizing


@dataclass(frozen=True)
class Sources:
    """What a worker needs to open its own streams: the datasets' files, how rows become examples."""

    files: list[RowFiles]
    how: Tokenizing
    seed: int
    buffer: int
    entries: list[Entry]

    def mixture(self, part: int, parts: int) -> Mixture:
        streams = [ShardStream(f, self.how, self.seed, self.buffer, part, parts) for f in self.files]
        return Mixture(streams, self.entries, 0)


@dataclass
class Item:
    example: Any
    slot: int
    state: dict[str, Any]  # the worker's mixture state after drawing `example`
    counts: dict[str, int]  # tokenize's counts over the worker's windows so far


@dataclass
class Failure:
    """A TuneloopError in a worker (a bad row), handed on whole: DataLoader would wrap it in a traceback."""

    message: str
    hint: str | None


class _Slots(torch.utils.data.IterableDataset):
    """In each worker: its slot's mixture, from its saved state, drawing without end."""

    def __init__(self, sources: Sources, rank: int, world: int, states: list[dict[str, Any]], first: int):
        super().__init__()
        self.sources, self.rank, self.world = sources, rank, world
        self.states, self.first = states, first

    def __iter__(self) -> Iterator[Item | Failure]:
        info = torch.utils.data.get_worker_info()
        workers = len(self.states)
        slot = ((info.id if info is not None else 0) + self.first) % workers
        mix = self.sources.mixture(self.rank * workers + slot, self.world * workers)
        mix.set_state(self.states[slot])
        try:
            while True:
                example = mix.draw()
                yield Item(example, slot, mix.state(), mix.counts())
        except TuneloopError as e:
            yield Failure(e.message, e.hint)


def data_workers(num_workers: int | str, streamed: bool, device: str) -> int:
    """DataLoader workers for the streamed data: num_workers, or for auto 1 when streaming on CUDA
    (the step runs on the GPU, so a worker takes tokenizing off its critical path on a core of its
    own; one worker keeps the in-process order) and 0 otherwise (on a CPU it competes with the step)."""
    if not streamed:
        return 0
    if num_workers == "auto":
        return 1 if device.startswith("cuda") else 0
    return int(num_workers)


def _as_is(item: Any) -> Any:
    return item


class LoadedMixture:
    """Mixture's interface (`take`, `state`, `restore`, `tokens`, `counts`) over W worker processes."""

    def __init__(
        self,
        sources: Sources,
        estimated_examples: int,
        rank: int,
        world: int,
        workers: int,
        per_step: int,
    ):
        self.sources, self.entries = sources, sources.entries
        self.estimated_examples = estimated_examples
        self.rank, self.world, self.workers = rank, world, workers
        self.per_step = per_step
        n = len(sources.files)
        self.slots = [fresh_state(n) for _ in range(workers)]  # each slot's state at its last consumed item
        self.next = 0  # the slot whose item the trainer takes next
        self._counts: list[dict[str, int]] = [{} for _ in range(workers)]
        self._items: Iterator[Item | Failure] | None = None

    @property
    def tokens(self) -> list[int]:
        return [sum(s["tokens"][k] for s in self.slots) for k in range(len(self.entries))]

    def take(self, n: int) -> list[Any]:
        if self._items is None:
            self._items = iter(self._loader())
        return [self._consume(next(self._items)) for _ in range(n)]

    def _consume(self, item: Item | Failure) -> Any:
        if isinstance(item, Failure):
            self.close()
            raise TuneloopError(item.message, hint=item.hint)
        if item.slot != self.next:  # the DataLoader's turns are what make the order reproducible
            raise RuntimeError(f"data worker slot {item.slot} answered out of turn (expected {self.next})")
        self.slots[item.slot] = item.state
        self._counts[item.slot] = item.counts
        self.next = (item.slot + 1) % self.workers
        return item.example

    def _loader(self) -> torch.utils.data.DataLoader:
        # the workers fork after the main process tokenized (validation, the epoch estimate): without
        # this each one prints the tokenizers library's fork warning (parallelism goes off in them anyway)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dataset = _Slots(self.sources, self.rank, self.world, [dict(s) for s in self.slots], self.next)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.workers,
            persistent_workers=True,
            # a window's worth ahead: the consumer keeps going while a worker builds its next window
            prefetch_factor=max(2 * math.ceil(self.per_step / self.workers), self.sources.buffer),
            collate_fn=_as_is,
        )

    def state(self) -> dict[str, Any]:
        return {"workers": self.workers, "next": self.next, "slots": [dict(s) for s in self.slots]}

    def restore(self, saved: dict[str, Any] | None, rank: int, world: int) -> None:
        """Continue from the positions every process saved (before the workers start)."""
        assert self._items is None, "restore before the first take"
        found = positions(saved, rank, world, self.workers, len(self.entries))
        if found is not None:
            self.slots, self.next = [dict(s) for s in found[0]], found[1]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self._counts:
            for k, v in c.items():
                out[k] = out.get(k, 0) + v
        return out

    def shares(self) -> dict[str, float]:
        tokens = self.tokens
        total = max(1, sum(tokens))
        return {e.name: t / total for e, t in zip(self.entries, tokens, strict=True)}

    def close(self) -> None:
        """Stop the workers (dropping the iterator shuts them down)."""
        self._items = None
