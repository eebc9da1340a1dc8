"""Which examples each optimizer step sees, and how they become tensors.

The data order is a pure function of (seed, step): step s of epoch e takes slice s of a permutation
seeded by (seed, e). So resuming at step s needs no data-loader state, and an out-of-memory retry
with a smaller micro-batch re-splits the very same global batch (same effective batch, same result).
"""

from __future__ import annotations

import itertools
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


def collate(examples: list[Example], pad_id: int, padding_free: bool = False) -> dict[str, Any]:
    """Right-padded tensors; packed examples get a block-diagonal causal mask (B, 1, T, T).

    `padding_free=True` (for a model switched with `attention.use_padding_free`) instead flattens
    the micro-batch into one row without any pad: see `flatten`.
    """
    import torch

    if padding_free:
        return flatten(examples)
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


def flatten(examples: list[Example]) -> dict[str, Any]:
    """The whole micro-batch as one row of every document back to back, no pad, no mask.

    Keys: `input_ids`, `labels`, `position_ids` (1, N) long, positions restarting at 0 at each
    document (the attention finds documents from these resets); and transformers' varlen kwargs
    `cu_seq_lens_q` = `cu_seq_lens_k` (D+1,) int32 (document starts, then N) and `max_length_q` =
    `max_length_k`, Python ints (the longest document), as HF's DataCollatorWithFlattening gives.
    Each document's first label is IGNORE: unpacked, the shift drops it; here it would be predicted
    from the previous document's last token. The loss is then exactly the sum of the documents'
    unpacked losses. Per-row scores (`sequence_logps`, DPO) need rows: not this.
    """
    import torch

    if not examples:
        raise ValueError("cannot collate an empty micro-batch")
    ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    for n, e in enumerate(examples):
        pieces = _pieces(e, n)
        start = 0
        for length in pieces:
            labels += [IGNORE, *e.labels[start + 1 : start + length]]
            start += length
        ids += e.input_ids
        lengths += pieces
    positions = [i for length in lengths for i in range(length)]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }


def _pieces(e: Example, n: int) -> list[int]:
    """Document lengths of example `n`, after checking its fields agree (a clear error, not a wrong loss)."""
    length = len(e.input_ids)
    if length == 0:
        raise ValueError(f"example {n} has no tokens")
    if len(e.labels) != length:
        raise ValueError(f"example {n} has {length} input ids but {len(e.labels)} labels")
    pieces = e.segments or [length]
    if sum(pieces) != length or min(pieces) < 1:
        raise ValueError(f"example {n}: segments {pieces} do not split its {length} tokens")
    if e.position_ids is not None and e.position_ids != [i for p in pieces for i in range(p)]:
        raise ValueError(f"example {n}: position_ids do not restart at 0 at each of its segments {pieces}")
    return pieces
