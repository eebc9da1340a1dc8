"""Turns a scheduled batch into tensors, runs the model over the paged KV cache, returns logits.

No policy here: the scheduler decided who runs and how many tokens; this module owns the weights
and the cache tensors, and sizes the cache from free device memory.

Host-to-device copies are non_blocking (a blocking one waits for every kernel queued before it), so
with async scheduling the inputs of step N+1 are built and queued while step N still runs. A row
whose newest token the host does not know yet (`Scheduled.token_from`) takes its id from the
previous step's sampled-token tensor, on the device.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from tuneloop.engine import sizing
from tuneloop.engine.attention import (
    DecodeMetadata,
    build_metadata,
    build_varlen_metadata,
    check_varlen_causal,
    varlen_fits,
)
from tuneloop.engine.config import EngineConfig
from tuneloop.engine.models.hf_fallback import HFFallback
from tuneloop.engine.models.llama import is_native, load_llama
from tuneloop.engine.quant import fp8_unsupported, quantize
from tuneloop.engine.scheduler import Scheduled
from tuneloop.engine.sizing import Device
from tuneloop.models.formats import folder_format
from tuneloop.models.loading import pick_device

log = logging.getLogger("tuneloop.engine")


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model: Any = None):
        if model is None:
            _check_servable(cfg.model)
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if cfg.quantization == "fp8" and (why := fp8_unsupported(self.device)):
            raise ValueError(why)  # before the weights load: no fallback to another format
        self.fallback = (
            None
            if model is not None or is_native(cfg.model)
            else HFFallback(cfg.model, self.dtype, self.device)
        )
        if model is not None:  # an already built native model (benchmarks with random weights)
            self.model = model
        else:
            self.model = (
                self.fallback.model if self.fallback else load_llama(cfg.model, self.dtype, self.device)
            )
        if cfg.quantization != "none":
            if self.fallback is not None:
                raise ValueError(f"quantization={cfg.quantization!r} needs a native (Llama-family) model")
            # before the KV cache is sized: the freed half of the weights goes to it
            quantize(self.model, cfg.quantization, compile=cfg.compile_ops and self.device.startswith("cuda"))
        mc = self.model.config
        self.num_layers = mc.num_hidden_layers
        self.kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        self.head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        self.vocab_size = mc.vocab_size
        self.max_model_len = cfg.max_model_len or getattr(mc, "max_position_embeddings", None) or 2048
        # decode steps on the GPU: Triton paged attention, replayed as CUDA graphs
        self.decode_kernel = self.fallback is None and self.device.startswith("cuda") and _has_triton()
        # what the config left to the engine (None / "auto"), decided for this device and model;
        # the engine reads the decided copy (self.cfg), `given` keeps what the user set
        self.given = cfg
        device = Device.probe(
            self.device,
            graphs=self.decode_kernel and not cfg.enforce_eager,
            varlen=varlen_fits(self.device, self.dtype, self.head_dim),
        )
        cfg = self.cfg = sizing.resolve(cfg, device, native=self.fallback is None)
        self.num_blocks = self._num_blocks()
        cfg = self.cfg = sizing.bound_by_cache(cfg, self.given, self.num_blocks)
        chosen = sizing.describe(cfg, self.given)
        if chosen:
            log.info("engine settings for %s: %s", device.name or device.kind, chosen)
        # one spare block past the end: padded rows of a captured decode graph write there
        shape = ((self.num_blocks + 1) * cfg.block_size, self.kv_heads, self.head_dim)
        if self.fallback is not None:  # transformers keeps its own cache: only the accounting is ours
            shape = (0, self.kv_heads, self.head_dim)
        self.kv_cache = [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(self.num_layers)
        ]
        self.lora: Any = None  # set by the engine when adapters are loaded
        self.max_blocks_per_seq = -(-self.max_model_len // cfg.block_size)
        self.graphs: Any = None
        self.varlen = cfg.prefill_attention == "varlen" and self.fallback is None
        # FlashAttention varlen for prompt chunks; otherwise "varlen" runs the exact per-sequence path
        self.varlen_kernel = self.varlen and varlen_fits(self.device, self.dtype, self.head_dim)
        if self.varlen_kernel:
            check_varlen_causal(self.device, self.dtype)
        if self.decode_kernel and cfg.compile_ops:
            from tuneloop.engine.models.llama import compile_fused_ops

            compile_fused_ops()
        if self.decode_kernel and not cfg.enforce_eager:
            from tuneloop.engine.cuda_graph import DecodeGraphs

            self.graphs = DecodeGraphs(
                self.model, self.kv_cache, cfg.block_size, min(cfg.max_num_seqs, cfg.max_graph_batch),
                self.max_blocks_per_seq, self.num_blocks * cfg.block_size, self.device,
            )  # fmt: skip

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def _num_blocks(self) -> int:
        cfg = self.cfg
        if cfg.kv_cache_gib is not None:
            budget = int(cfg.kv_cache_gib * 2**30)
        elif self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            # leave room for activations of one full step (logits dominate: tokens x vocab x fp32)
            activations = cfg.max_num_batched_tokens * (
                self.vocab_size * 4 + 64 * self.model.config.hidden_size
            )
            budget = int((free - activations - self._lora_slot_bytes()) * cfg.kv_cache_fraction)
        else:
            budget = 2**30
        blocks = budget // (self.bytes_per_token * cfg.block_size)
        if blocks < 2:
            raise ValueError(f"no room for a KV cache ({budget / 2**20:.0f} MiB available)")
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB)", blocks, cfg.block_size,
                 blocks * cfg.block_size * self.bytes_per_token / 2**30)  # fmt: skip
        return blocks

    def _lora_slot_bytes(self) -> int:
        """lora_in_graph: the adapters' slot buffers, allocated at the first load, after the cache is sized."""
        if not self.cfg.lora_in_graph or self.fallback is not None:
            return 0
        from tuneloop.engine.lora import slot_buffer_bytes

        return slot_buffer_bytes(self.model, self.cfg.max_loras, self.cfg.max_lora_rank, self.dtype)

    def release(self, request_id: str) -> None:
        if self.fallback is not None:
            self.fallback.release(request_id)

    @torch.inference_mode()
    def run(
        self, batch: list[Scheduled], prev_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (S, V) for the sequences that sample, and full logits (N, V) when prompt logprobs are asked.

        prev_tokens: (S',) the previous step's sampled ids on the device, read by rows with token_from >= 0.
        """
        if self.fallback is not None:
            assert all(item.token_from < 0 for item in batch), "the fallback reads token ids on the host"
            rows = [self.fallback.last_hidden_logits(item.seq, item.num_tokens) for item in batch]
            keep = [r for r, item in zip(rows, batch, strict=True) if item.samples]
            return (torch.stack(keep) if keep else torch.zeros((0, self.vocab_size))), None
        want_prompt = any(item.seq.params.prompt_logprobs is not None and item.seq.num_computed < len(item.seq.prompt_ids)
                          for item in batch)  # fmt: skip
        if self.decode_kernel and not want_prompt:
            decodes = [i for i in batch if i.num_tokens == 1 and i.samples]
            if len(decodes) == len(batch):
                return self._decode(batch, prev_tokens), None
            if decodes:  # a mixed step: decodes by the kernel (graph), prompt chunks by the padded path
                rest = [i for i in batch if not (i.num_tokens == 1 and i.samples)]
                dec_logits = self._decode(decodes, prev_tokens)
                rest_logits, _ = self.run(rest, prev_tokens)
                rows: dict[int, torch.Tensor] = {id(i): dec_logits[k] for k, i in enumerate(decodes)}
                rows.update({id(i): rest_logits[k] for k, i in enumerate(j for j in rest if j.samples)})
                return torch.stack([rows[id(i)] for i in batch if i.samples]), None
        ids, positions, starts, counts, tables = [], [], [], [], []
        pending: list[tuple[int, int]] = []  # (flat row, row of prev_tokens)
        for item in batch:
            s, n = item.seq.num_computed, item.num_tokens
            if item.token_from >= 0:  # a decode of a token only the device knows yet
                pending.append((len(ids), item.token_from))
                ids.append(0)
            else:
                ids.extend(item.seq.token_ids[s : s + n])
            positions.extend(range(s, s + n))
            starts.append(s)
            counts.append(n)
            tables.append(item.seq.block_table)
        if self.varlen:
            cpu: Any = build_varlen_metadata(tables, starts, counts, self.cfg.block_size, torch.device("cpu"),
                                             self.varlen_kernel)  # fmt: skip
        else:
            cpu = build_metadata(tables, starts, counts, self.cfg.block_size, torch.device("cpu"))
        meta = type(cpu)(*(self._to_device(getattr(cpu, f.name)) for f in fields(cpu)))
        input_ids = self._input_ids(torch.tensor(ids), pending, prev_tokens)
        lora = self.lora.for_batch(batch) if self.lora is not None else None
        hidden = self.model(input_ids, self._to_device(torch.tensor(positions)), self.kv_cache, meta, lora)
        ends = torch.tensor(counts).cumsum(0) - 1
        sampling_rows = [int(e) for e, item in zip(ends, batch, strict=True) if item.samples]
        logits = (
            self.model.logits(hidden.index_select(0, self._to_device(torch.tensor(sampling_rows))))
            if sampling_rows
            else hidden.new_zeros((0, self.vocab_size))
        )
        return logits, (self.model.logits(hidden) if want_prompt else None)

    def _to_device(self, t: Any) -> Any:
        # non_blocking from pageable memory: staged at once, without waiting for the queued kernels
        return t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t

    def _input_ids(
        self, ids: torch.Tensor, pending: list[tuple[int, int]], prev_tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """ids (N,) from the host, on the device, rows in `pending` filled from the previous step's samples."""
        ids = self._to_device(ids)
        if pending:
            assert prev_tokens is not None, "a row reads the previous step's tokens but none were given"
            rows, sources = zip(*pending, strict=True)
            ids.index_copy_(
                0,
                self._to_device(torch.tensor(rows)),
                prev_tokens.index_select(0, self._to_device(torch.tensor(sources))),
            )
        return ids

    def _decode(self, batch: list[Scheduled], prev_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """A decode-only step: one token per sequence, attention straight from the block tables."""
        bs = self.cfg.block_size
        seqs = [item.seq for item in batch]
        pos_list = [s.num_computed for s in seqs]  # the position of each sequence's last token
        pending = [(k, item.token_from) for k, item in enumerate(batch) if item.token_from >= 0]
        host_ids = [0 if i.token_from >= 0 else (i.seq.output_ids or i.seq.prompt_ids)[-1] for i in batch]
        ids = self._input_ids(torch.tensor(host_ids), pending, prev_tokens)
        positions = torch.tensor(pos_list)
        slots = torch.tensor(
            [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, pos_list, strict=True)]
        )
        width = max(len(s.block_table) for s in seqs)
        # via NumPy: half the time of torch.tensor on a list of lists (this runs every decode step)
        rows = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
        tables = torch.from_numpy(np.array(rows, np.int32))
        lens = (positions + 1).to(torch.int32)
        has_lora = self.lora is not None and any(item.seq.lora is not None for item in batch)
        if self.graphs is not None and len(batch) <= self.graphs.max_batch:
            if not has_lora:
                return self.graphs.run(ids, positions, slots, tables, lens)
            if self.cfg.lora_in_graph:  # adapters from fixed slot buffers, replayed (cuda_graph.py)
                return self.graphs.run(
                    ids, positions, slots, tables, lens, self.lora, self.lora.row_slots(batch)
                )
        lora = self.lora.for_batch(batch) if has_lora else None
        meta = DecodeMetadata(self._to_device(slots), self._to_device(tables), self._to_device(lens), bs)
        hidden = self.model(ids, self._to_device(positions), self.kv_cache, meta, lora)
        return self.model.logits(hidden)


def _check_servable(folder: str) -> None:
    """Exports the engine cannot run (ONNX graphs, packed int4) fail here, by name, not deep in a loader."""
    kind = folder_format(folder)
    if kind in ("onnx", "int4"):
        what = "an ONNX export" if kind == "onnx" else "a packed int4 export"
        raise ValueError(
            f"{folder} is {what}, which the engine does not serve; serve the merged bf16 version it was "
            "exported from (its registry parent), or evaluate this one with `tuneloop eval`"
        )


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        log.warning("triton is not installed: GPU decode falls back to gathered SDPA (slower)")
        return False
    return True
