"""What a streamed run draws its examples from: one dataset's stream, or several mixed by weight.

Each draw takes the dataset furthest below its share of the tokens drawn so far (the largest
`weight * total - tokens`): deterministic, so a resumed run draws as the uninterrupted one did, and
every dataset's share of the training tokens stays within one example of its weight at any point
(within 1% once a process has drawn 100 examples' worth of the longest example).

The checkpoint keeps each process's position (every stream's position and the tokens drawn). A
run resumed on another number of processes cannot continue the same order (the rows are
partitioned by process): every stream restarts at the earliest window any process was in, so some
rows of that window come again; it says so.
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
        return [self._draw() for _ in range(n)]

    def _draw(self) -> Any:
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
        if not saved or not saved.get("ranks"):
            log.warning("the checkpoint holds no data position: the data stream starts from the beginning")
            return
        ranks = saved["ranks"]
        if len(ranks[0]["streams"]) != len(self.streams):
            log.warning("the checkpoint's data streams differ from this run's: the data starts over")
            return
        if saved.get("world") == world:
            mine = ranks[rank]
            for stream, state in zip(self.streams, mine["streams"], strict=True):
                stream.restore(state)
            self.tokens = list(mine["tokens"])
            return
        old = int(saved["world"])
        for k, stream in enumerate(self.streams):
            epoch, window = min((r["streams"][k]["epoch"], r["streams"][k]["window"]) for r in ranks)
            # a window of each of `old` partitions covers window * buffer * old rows of the epoch
            stream.restore({"epoch": epoch, "window": window * old // world, "taken": 0})
        self.tokens = [sum(r["tokens"][k] for r in ranks) // world for k in range(len(self.streams))]
        log.warning(
            "resuming a streamed run on %d processes that saved its data position on %d: each dataset "
            "restarts at the earliest window any process was in (some rows of it come again)",
            world,
            old,
        )
