"""Which examples each optimizer step sees, and how they become tensors.

The data order is a pure function of (seed, step): step s of epoch e takes slice s of a permutation
seeded by (seed, e). So resuming at step s needs no data-loader state, and an out-of-memory retry
with a smaller micro-batch re-splits the very same global batch (same effective batch, same result).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from tuneloop.train.dataset import IGNORE, Example


@dataclass(frozen=True)
class StepPlan:
    n_examples: int
    global_batch: int
    seed: int
    total_steps: int

    @classmethod
    def build(
        cls, n_examples: int, global_batch: int, seed: int, epochs: float, max_steps: int | None
    ) -> StepPlan:
        per_epoch = math.ceil(n_examples / global_batch)
        total = max_steps if max_steps else max(1, math.ceil(per_epoch * epochs))
        return cls(n_examples, global_batch, seed, total)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.global_batch)

    def batch(self, step: int) -> list[int]:
        """Example indices of the global batch of `step` (the last one of an epoch may be short)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = list(range(self.n_examples))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[i * self.global_batch : (i + 1) * self.global_batch]


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (strided, so shares differ by at most one)."""
    return indices[rank::world]


def micro_batches(indices: list[int], micro: int) -> list[list[int]]:
    return [indices[i : i + micro] for i in range(0, len(indices), micro)]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; packed examples get a block-diagonal causal mask (B, 1, T, T)."""
    import torch

    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[b, : len(e.labels)] = torch.tensor(e.labels)
    if not any(e.segments for e in examples):
        mask = (torch.arange(T)[None, :] < torch.tensor([len(e.input_ids) for e in examples])[:, None]).long()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    positions = torch.zeros((len(examples), T), dtype=torch.long)
    masks = []
    for b, e in enumerate(examples):
        pos = e.position_ids or list(range(len(e.input_ids)))
        positions[b, : len(pos)] = torch.tensor(pos)
        masks.append(_block_causal(e.segments or [len(e.input_ids)], T))
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "attention_mask": torch.stack(masks),
    }


def _block_causal(lengths: list[int], T: int) -> Any:
    """(1, T, T) bool: token i sees token j iff j <= i in the same piece; a pad sees only itself."""
    import torch

    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    pad = T - len(seg)
    seg = torch.cat([seg, -1 - torch.arange(pad)])  # unique ids: no all-masked row (that gives NaN)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return (causal & (seg[:, None] == seg[None, :]))[None]
