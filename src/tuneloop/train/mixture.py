"""What a streamed run draws its examples from: one dataset's stream, or several mixed by weight.

Each draw takes the dataset furthest below its share of the tokens drawn so far (the largest
`weight * total - tokens`): deterministic, so a resumed run draws as the uninterrupted one did, and
every dataset's share of the training tokens stays within one example of its weight at any point
(within 1% once a process has drawn 100 examples' worth of the longest example).

The checkpoint keeps each process's position (every stream's position and the tokens drawn; with
DataLoader workers, loader.py, each worker's). A run resumed on another number of processes, or of
workers past one, cannot continue the same order (the rows are partitioned by process x worker):
every stream restarts at the earliest window any of them was in, so some rows of that window come
again; it says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tuneloop.train.dataset import input_length
from tuneloop.train.streaming import ShardStream

log = logging.getLogger("tuneloop.train")


@dataclass(frozen=True)
class Entry:
    name: str  # the dataset's path or URL, as configured
    weight: float  # normalized: the weights sum to 1


class Mixture:
    """This process's examples: `take(n)` for each optimizer step; `state()` / `restore()` for checkpoints."""

    def __init__(self, streams: list[ShardStream], entries: list[Entry], estimated_examples: int):
        self.streams, self.entries = streams, entries
        self.estimated_examples = estimated_examples  # one epoch, every process together (sets `epochs`)
        self.tokens = [0] * len(streams)

    def take(self, n: int) -> list[Any]:
        return [self.draw() for _ in range(n)]

    def draw(self) -> Any:
        total = sum(self.tokens)
        i = max(range(len(self.streams)), key=lambda k: self.entries[k].weight * total - self.tokens[k])
        example = self.streams[i].next()
        self.tokens[i] += input_length(example)
        return example

    def shares(self) -> dict[str, float]:
        """Each dataset's share of the input tokens this process drew."""
        total = max(1, sum(self.tokens))
        return {e.name: t / total for e, t in zip(self.entries, self.tokens, strict=True)}

    def counts(self) -> dict[str, int]:
        """tokenize's counts (truncated, dropped_...) over the windows built so far, all datasets."""
        out: dict[str, int] = {}
        for s in self.streams:
            for k, v in s.counts.items():
                out[k] = out.get(k, 0) + v
        return out

    def state(self) -> dict[str, Any]:
        return {"streams": [s.state() for s in self.streams], "tokens": list(self.tokens)}

    def restore(self, saved: dict[str, Any] | None, rank: int, world: int) -> None:
        """Continue from the positions every process saved (`{"world": W, "ranks": [state, ...]}`)."""
        found = positions(saved, rank, world, 1, len(self.streams))
        if found is not None:
            self.set_state(found[0][0])

    def set_state(self, state: dict[str, Any]) -> None:
        for stream, position in zip(self.streams, state["streams"], strict=True):
            stream.restore(position)
        self.tokens = list(state["tokens"])


def fresh_state(n_streams: int) -> dict[str, Any]:
    """The state of a mixture that has drawn nothing."""
    return {"streams": [{"epoch": 0, "window": 0, "taken": 0}] * n_streams, "tokens": [0] * n_streams}


def _slots(rank_state: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """A process's saved position as its workers' states and the worker next in turn (a position
    saved without workers, num_workers=0, is one worker's: the same partition and order)."""
    if "slots" in rank_state:
        return rank_state["slots"], int(rank_state["next"])
    return [rank_state], 0


def positions(
    saved: dict[str, Any] | None, rank: int, world: int, workers: int, n_streams: int
) -> tuple[list[dict[str, Any]], int] | None:
    """This process's `workers` mixture states and the worker whose example comes next, from what
    every process saved: exactly when the processes and workers are as saved; else every stream
    restarts at the earliest window any process's worker was in. None: start from the beginning."""
    if not saved or not saved.get("ranks"):
        log.warning("the checkpoint holds no data position: the data stream starts from the beginning")
        return None
    ranks = [_slots(r) for r in saved["ranks"]]
    if len(ranks[0][0][0]["streams"]) != n_streams:
        log.warning("the checkpoint's data streams differ from this run's: the data starts over")
        return None
    old_workers = len(ranks[0][0])
    if saved.get("world") == world and old_workers == workers:
        return ranks[rank]
    states = [s for slots, _ in ranks for s in slots]
    old, new = int(saved["world"]) * old_workers, world * workers  # partitions of the rows
    streams = []
    for k in range(n_streams):
        epoch, window = min((s["streams"][k]["epoch"], s["streams"][k]["window"]) for s in states)
        # a window of each of `old` partitions covers window * buffer * old rows of the epoch
        streams.append({"epoch": epoch, "window": window * old // new, "taken": 0})
    tokens = [sum(s["tokens"][k] for s in states) // new for k in range(n_streams)]
    log.warning(
        "resuming a streamed run on %d processes x %d data workers (num_workers) that saved its data "
        "position on %d x %d: each dataset restarts at the earliest window any of them was in (some "
        "rows of it come again)",
        world,
        workers,
        saved["world"],
        old_workers,
    )
    return [{"streams": list(streams), "tokens": list(tokens)} for _ in range(workers)], 0
