"""CUDA graphs of the decode step, one per batch size of a ladder (1, 2, 4, 8, 16, 32, ...).

A decode step of a Llama-8B-shaped model launches several hundred small kernels; at batch 1 the
CPU cannot launch them as fast as the GPU runs them, so plain PyTorch leaves most of the memory
bandwidth unused. A graph replays the whole step (embedding -> layers -> logits) in one launch.
Shapes must be static: a batch is padded up to the next captured size; padded rows write their
K/V into a spare block that no sequence owns, and attend over one token.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneloop.engine.attention import DecodeMetadata

log = logging.getLogger("tuneloop.engine")


def batch_sizes(max_batch: int) -> list[int]:
    ladder = [1, 2, 4, 8, *range(16, max_batch + 1, 16)]
    return sorted({s for s in ladder if s <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(self, model: Any, kv_cache: list, block_size: int, max_batch: int, max_blocks: int,
                 spare_slot: int, device: str):  # fmt: skip
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.sizes = batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.spare_slot = spare_slot
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), spare_slot, dtype=torch.long, device=device)
        self.tables = torch.zeros((n, max_blocks), dtype=torch.int32, device=device)
        self.lens = torch.ones(n, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture()

    def _forward(self, bs: int) -> torch.Tensor:
        meta = DecodeMetadata(self.slots[:bs], self.tables[:bs], self.lens[:bs], self.block_size)
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, meta)
        return self.model.logits(hidden)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        # largest first: smaller graphs reuse the memory pool the largest one reserved
        for bs in reversed(self.sizes):
            self._forward(bs)  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def run(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor,
            lens: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Inputs of B rows, on the host (ids may be on the device: async scheduling fills them there);
        returns the (B, V) logits (a view, valid until the next run: sample from it before that)."""
        B = ids.shape[0]
        bs = next(s for s in self.sizes if s >= B)
        self.input_ids[:B].copy_(ids, non_blocking=True)
        self.positions[:B].copy_(positions, non_blocking=True)
        self.slots[:B].copy_(slots, non_blocking=True)
        self.slots[B:bs].fill_(self.spare_slot)
        self.lens[:B].copy_(lens, non_blocking=True)
        self.lens[B:bs].fill_(1)
        self.tables[:B, : tables.shape[1]].copy_(tables, non_blocking=True)
        self.graphs[bs].replay()
        return self.outputs[bs][:B]
