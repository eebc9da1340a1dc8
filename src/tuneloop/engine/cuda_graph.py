"""CUDA graphs of the decode step, one per batch size of a ladder (1, 2, 4, 8, 16, 32, ...).

A decode step of a Llama-8B-shaped model launches several hundred small kernels; at batch 1 the
CPU cannot launch them as fast as the GPU runs them, so plain PyTorch leaves most of the memory
bandwidth unused. A graph replays the whole step (embedding -> layers -> logits) in one launch.
Shapes must be static: a batch is padded up to the next captured size; padded rows write their
K/V into a spare block that no sequence owns, and attend over one token.

With LoRA (EngineConfig.lora_in_graph) a second set of graphs, for the same ladder, runs the
adapters' deltas from the manager's fixed slot buffers (lora.py), indexed by a persistent per-row
slot tensor filled before replay (0, a zero slot, for base rows and padding). It is captured lazily,
at the first decode step that has an adapter row: the slot buffers exist by then and never move
afterwards, and an engine that never serves an adapter pays no capture time or graph memory. Steps
without adapter rows keep replaying the base graphs, which skip the LoRA work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from tuneloop.engine.attention import DecodeMetadata

log = logging.getLogger("tuneloop.engine")


def batch_sizes(max_batch: int) -> list[int]:
    ladder = [1, 2, 4, 8, *range(16, max_batch + 1, 16)]
    return sorted({s for s in ladder if s <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: Any,
        kv_cache: list,
        block_size: int,
        max_batch: int,
        max_blocks: int,
        spare_slot: int,
        device: str,
        splits: Callable[[int], int] = lambda batch: 1,  # split-KV ranges for a batch size
    ):
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.sizes = batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.spare_slot = spare_slot
        self.splits = splits
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), spare_slot, dtype=torch.long, device=device)
        self.tables = torch.zeros((n, max_blocks), dtype=torch.int32, device=device)
        self.lens = torch.ones(n, dtype=torch.int32, device=device)
        self.lora_slots = torch.zeros(n, dtype=torch.long, device=device)  # adapter slot per row
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.lora_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.lora_outputs: dict[int, torch.Tensor] = {}
        self.pool: Any = None
        self._capture(self.graphs, self.outputs, None)

    def _forward(self, bs: int, lora: Any) -> torch.Tensor:
        meta = DecodeMetadata(
            self.slots[:bs], self.tables[:bs], self.lens[:bs], self.block_size, self.splits(bs)
        )
        batch_lora = lora.slotted(self.lora_slots[:bs]) if lora is not None else None
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, meta, batch_lora)
        return self.model.logits(hidden)

    @torch.inference_mode()
    def _capture(self, graphs: dict, outputs: dict, lora: Any) -> None:
        # capture runs write K/V: every row goes to the spare block (the buffers may hold a live step's rows)
        self.slots.fill_(self.spare_slot)
        self.lens.fill_(1)
        self.lora_slots.zero_()
        # largest first: smaller graphs reuse the memory pool the largest one reserved
        for bs in reversed(self.sizes):
            self._forward(bs, lora)  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                outputs[bs] = self._forward(bs, lora)
            self.pool = graph.pool()
            graphs[bs] = graph
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs%s for batch sizes %s", " with LoRA" if lora else "", self.sizes)

    def run(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        tables: torch.Tensor,
        lens: torch.Tensor,
        lora: Any = None,
        lora_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inputs of B rows, on the host (ids may be on the device: async scheduling fills them there);
        returns the (B, V) logits (a view, valid until the next run: sample from it before that).

        lora: the LoRAManager (with slot buffers) when some row has an adapter; lora_slots (B,) host
        int64 each row's slot (0: base)."""
        B = ids.shape[0]
        bs = next(s for s in self.sizes if s >= B)
        graphs, outputs = self.graphs, self.outputs
        if lora is not None:
            if not self.lora_graphs:
                self._capture(self.lora_graphs, self.lora_outputs, lora)
            graphs, outputs = self.lora_graphs, self.lora_outputs
            self.lora_slots[:B].copy_(lora_slots, non_blocking=True)
            self.lora_slots[B:bs].zero_()
        self.input_ids[:B].copy_(ids, non_blocking=True)
        self.positions[:B].copy_(positions, non_blocking=True)
        self.slots[:B].copy_(slots, non_blocking=True)
        self.slots[B:bs].fill_(self.spare_slot)
        self.lens[:B].copy_(lens, non_blocking=True)
        self.lens[B:bs].fill_(1)
        self.tables[:B, : tables.shape[1]].copy_(tables, non_blocking=True)
        graphs[bs].replay()
        return outputs[bs][:B]
