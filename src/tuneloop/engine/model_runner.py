"""The native runner: a scheduled batch -> tensors -> the model over the paged KV cache -> next tokens.

No policy here: the scheduler decided who runs and how many tokens; this module owns the weights
and the cache tensors, and sizes the cache from free device memory. A step is prepared, run and
sampled in three phases (runner.py); `prepare` picks one of three inputs:
  DecodeInput  decode-only steps on the GPU: Triton paged attention, replayed as CUDA graphs
  FlatInput    prompt chunks (and everything on the CPU): the rows flattened, padded or varlen attention
  MixedInput   a step with both: decodes by the kernel (graph), prompt chunks by the flat path

Host-to-device copies are non_blocking (a blocking one waits for every kernel queued before it), so
with async scheduling the inputs of step N+1 are built and queued while step N still runs. A row
whose newest token the host does not know yet (a placeholder, async_scheduler.py) takes its id from
the tokens this runner sampled on the device in the step before (`sample_on_device`), on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from tuneloop.engine.attention import (
    DecodeMetadata,
    build_metadata,
    build_varlen_metadata,
    check_varlen_causal,
    varlen_fits,
)
from tuneloop.engine.config import EngineConfig
from tuneloop.engine.cuda_graph import DecodeGraphs
from tuneloop.engine.lora import slot_buffer_bytes
from tuneloop.engine.models.llama import compile_fused_ops, load_llama
from tuneloop.engine.quant import fp8_unsupported, quantize
from tuneloop.engine.runner import Logits, OnDevice, RunnerBase, pick_dtype
from tuneloop.engine.scheduler import Scheduled
from tuneloop.engine.sizing import Device
from tuneloop.models.loading import pick_device

log = logging.getLogger("tuneloop.engine")


@dataclass
class DecodeInput:
    """One token per row, attention straight from the block tables (host tensors but `ids`)."""

    batch: list[Scheduled]
    ids: torch.Tensor  # (B,) on the device
    positions: torch.Tensor  # (B,) the position of each row's token
    slots: torch.Tensor  # (B,) where its K/V go in the cache
    tables: torch.Tensor  # (B, W) int32 block tables, zero-padded
    lens: torch.Tensor  # (B,) int32 tokens to attend over
    has_lora: bool
    device_ids: int  # rows whose id is read from the previous step's samples on the device


@dataclass
class FlatInput:
    """Every row's tokens in one flat sequence (on the device), with the attention metadata."""

    batch: list[Scheduled]
    ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    meta: Any  # attention metadata (padded or varlen)
    lora: Any  # BatchLoRA | None
    sampling_rows: torch.Tensor | None  # (S,) flat index of each sampling row's last token
    want_prompt: bool  # every position's logits, for prompt logprobs
    device_ids: int


@dataclass
class MixedInput:
    batch: list[Scheduled]
    decode: DecodeInput
    flat: FlatInput

    @property
    def device_ids(self) -> int:
        return self.decode.device_ids + self.flat.device_ids


NativeInput = DecodeInput | FlatInput | MixedInput


class ModelRunner(RunnerBase):
    def __init__(self, cfg: EngineConfig, model: Any = None):
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        if cfg.quantization == "fp8" and (why := fp8_unsupported(device)):
            raise ValueError(why)  # before the weights load: no fallback to another format
        # `model`: an already built native model (benchmarks with random weights)
        model = model if model is not None else load_llama(cfg.model, dtype, device)
        if cfg.quantization != "none":
            # before the KV cache is sized: the freed half of the weights goes to it
            quantize(model, cfg.quantization, compile=cfg.compile_ops and device.startswith("cuda"))
        # decode steps on the GPU: Triton paged attention, replayed as CUDA graphs
        self.decode_kernel = device.startswith("cuda") and _has_triton()
        mc = model.config
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        probe = Device.probe(
            device,
            graphs=self.decode_kernel and not cfg.enforce_eager,
            varlen=varlen_fits(device, dtype, head_dim),
        )
        super().__init__(cfg, device, dtype, model, probe)
        cfg = self.cfg
        # one spare block past the end: padded rows of a captured decode graph write there
        shape = ((self.num_blocks + 1) * cfg.block_size, self.kv_heads, self.head_dim)
        self.kv_cache = [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(self.num_layers)
        ]
        self.graphs: DecodeGraphs | None = None
        self.varlen = cfg.prefill_attention == "varlen"
        # FlashAttention varlen for prompt chunks; otherwise "varlen" runs the exact per-sequence path
        self.varlen_kernel = self.varlen and varlen_fits(self.device, self.dtype, self.head_dim)
        if self.varlen_kernel:
            check_varlen_causal(self.device, self.dtype)
        if self.decode_kernel and cfg.compile_ops:
            compile_fused_ops()
        if self.decode_kernel and not cfg.enforce_eager:
            self.graphs = DecodeGraphs(
                self.model,
                self.kv_cache,
                cfg.block_size,
                min(cfg.max_num_seqs, cfg.max_graph_batch),
                self.max_blocks_per_seq,
                self.num_blocks * cfg.block_size,
                self.device,
                self.decode_splits,
            )
        # the tokens of the last step sampled on the device, and the row of each request in them
        self._prev: torch.Tensor | None = None
        self._prev_rows: dict[str, int] = {}
        # two host buffers for their readback: one per step in flight
        self._pinned = (
            [_pinned(cfg.max_num_seqs), _pinned(cfg.max_num_seqs)] if self.device.startswith("cuda") else []
        )

    def _reserved_bytes(self) -> int:
        """lora_in_graph: the adapters' slot buffers, allocated at the first load, after the cache is sized."""
        if not self.cfg.lora_in_graph:
            return 0
        return slot_buffer_bytes(self.model, self.cfg.max_loras, self.cfg.max_lora_rank, self.dtype)

    # ------------------------------------------------------------ prepare

    @torch.inference_mode()
    def prepare(self, batch: list[Scheduled]) -> NativeInput:
        """The step's inputs, queued to the device without waiting for it."""
        want_prompt = any(
            item.seq.params.prompt_logprobs is not None and item.seq.num_computed < len(item.seq.prompt_ids)
            for item in batch
        )
        if self.decode_kernel and not want_prompt:
            decodes = [i for i in batch if i.num_tokens == 1 and i.samples]
            if len(decodes) == len(batch):
                return self._prepare_decode(batch)
            if decodes:  # a mixed step: decodes by the kernel (graph), prompt chunks by the flat path
                rest = [i for i in batch if not (i.num_tokens == 1 and i.samples)]
                return MixedInput(batch, self._prepare_decode(decodes), self._prepare_flat(rest, False))
        return self._prepare_flat(batch, want_prompt)

    def _from_device(self, item: Scheduled) -> bool:
        """The row's last input token is a placeholder: sampled on the device, not yet known here."""
        seq = item.seq
        return seq.num_computed + item.num_tokens > seq.num_tokens

    def _prepare_flat(self, batch: list[Scheduled], want_prompt: bool) -> FlatInput:
        ids, positions, starts, counts, tables = [], [], [], [], []
        pending: list[tuple[int, int]] = []  # (flat row, row of the previous step's samples)
        for item in batch:
            s, n = item.seq.num_computed, item.num_tokens
            if self._from_device(item):  # a decode of a token only the device knows yet
                pending.append((len(ids), self._prev_rows[item.seq.request_id]))
                ids.append(0)
            else:
                ids.extend(item.seq.token_ids[s : s + n])
            positions.extend(range(s, s + n))
            starts.append(s)
            counts.append(n)
            tables.append(item.seq.block_table)
        if self.varlen:
            cpu: Any = build_varlen_metadata(
                tables, starts, counts, self.cfg.block_size, torch.device("cpu"), self.varlen_kernel
            )
        else:
            cpu = build_metadata(tables, starts, counts, self.cfg.block_size, torch.device("cpu"))
        meta = type(cpu)(*(self._to_device(getattr(cpu, f.name)) for f in fields(cpu)))
        input_ids = self._input_ids(torch.tensor(ids), pending)
        lora = self.lora.for_batch(batch) if self.lora is not None else None
        ends = torch.tensor(counts).cumsum(0) - 1
        rows = [int(e) for e, item in zip(ends, batch, strict=True) if item.samples]
        sampling_rows = self._to_device(torch.tensor(rows)) if rows else None
        return FlatInput(
            batch,
            input_ids,
            self._to_device(torch.tensor(positions)),
            meta,
            lora,
            sampling_rows,
            want_prompt,
            len(pending),
        )

    def _prepare_decode(self, batch: list[Scheduled]) -> DecodeInput:
        bs = self.cfg.block_size
        seqs = [item.seq for item in batch]
        pos_list = [s.num_computed for s in seqs]  # the position of each sequence's last token
        pending = [
            (k, self._prev_rows[item.seq.request_id])
            for k, item in enumerate(batch)
            if self._from_device(item)
        ]
        host_ids = [0 if self._from_device(i) else (i.seq.output_ids or i.seq.prompt_ids)[-1] for i in batch]
        ids = self._input_ids(torch.tensor(host_ids), pending)
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
        return DecodeInput(batch, ids, positions, slots, tables, lens, has_lora, len(pending))

    def _to_device(self, t: Any) -> Any:
        # non_blocking from pageable memory: staged at once, without waiting for the queued kernels
        return t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t

    def _input_ids(self, ids: torch.Tensor, pending: list[tuple[int, int]]) -> torch.Tensor:
        """ids (N,) from the host, on the device, rows in `pending` filled from the previous step's samples."""
        ids = self._to_device(ids)
        if pending:
            assert self._prev is not None, "a row reads the previous step's tokens but none were sampled"
            rows, sources = zip(*pending, strict=True)
            ids.index_copy_(
                0,
                self._to_device(torch.tensor(rows)),
                self._prev.index_select(0, self._to_device(torch.tensor(sources))),
            )
        return ids

    def decode_splits(self, batch: int) -> int:
        """KV ranges per sequence for a decode step of `batch` rows (EngineConfig.split_kv_decode)."""
        if not (self.cfg.split_kv_decode and self.decode_kernel):
            return 1
        from tuneloop.engine.kernels.paged_decode import decode_splits  # needs triton (GPU extra)

        return decode_splits(batch, self.kv_heads, torch.device(self.device))

    # ------------------------------------------------------------ run

    @torch.inference_mode()
    def run(self, inputs: NativeInput) -> Logits:
        """Logits (S, V) for the rows that sample, and (N, V) for every position when prompt logprobs are asked."""
        if isinstance(inputs, DecodeInput):
            return Logits(self._run_decode(inputs), None)
        if isinstance(inputs, FlatInput):
            return self._run_flat(inputs)
        dec_logits = self._run_decode(inputs.decode)
        rest_logits = self._run_flat(inputs.flat).sampling
        rows: dict[int, torch.Tensor] = {id(i): dec_logits[k] for k, i in enumerate(inputs.decode.batch)}
        rows.update({id(i): rest_logits[k] for k, i in enumerate(j for j in inputs.flat.batch if j.samples)})
        return Logits(torch.stack([rows[id(i)] for i in inputs.batch if i.samples]), None)

    def _run_flat(self, x: FlatInput) -> Logits:
        hidden = self.model(x.ids, x.positions, self.kv_cache, x.meta, x.lora)
        logits = (
            self.model.logits(hidden.index_select(0, x.sampling_rows))
            if x.sampling_rows is not None
            else hidden.new_zeros((0, self.vocab_size))
        )
        return Logits(logits, self.model.logits(hidden) if x.want_prompt else None)

    def _run_decode(self, x: DecodeInput) -> torch.Tensor:
        if self.graphs is not None and len(x.batch) <= self.graphs.max_batch:
            if not x.has_lora:
                return self.graphs.run(x.ids, x.positions, x.slots, x.tables, x.lens)
            if self.cfg.lora_in_graph:  # adapters from fixed slot buffers, replayed (cuda_graph.py)
                return self.graphs.run(
                    x.ids, x.positions, x.slots, x.tables, x.lens, self.lora, self.lora.row_slots(x.batch)
                )
        lora = self.lora.for_batch(x.batch) if x.has_lora else None
        to = self._to_device
        meta = DecodeMetadata(
            to(x.slots), to(x.tables), to(x.lens), self.cfg.block_size, self.decode_splits(len(x.batch))
        )
        hidden = self.model(x.ids, to(x.positions), self.kv_cache, meta, lora)
        return self.model.logits(hidden)

    # ------------------------------------------------------------ sample

    def sample_on_device(self, logits: Logits, inputs: NativeInput) -> OnDevice:
        """Next tokens left on the device (no host synchronization); their host copy arrives behind an
        event. The next step's rows read their input ids from these (`_input_ids`)."""
        sampling = [item for item in inputs.batch if item.samples]
        if sampling:
            tokens, failed = self.sampler.on_device(logits.sampling, [item.seq for item in sampling])
        else:
            tokens, failed = torch.zeros(0, dtype=torch.long, device=logits.sampling.device), {}
        self._prev, self._prev_rows = tokens, {item.seq.request_id: k for k, item in enumerate(sampling)}
        if not tokens.is_cuda:
            return OnDevice(tokens, tokens, None, failed)
        # step N's buffer is read (OnDevice.wait) before step N+2 is sampled and writes it again
        self._pinned.reverse()
        n = len(sampling)  # <= max_num_seqs (the scheduler's limit); a fresh buffer if ever not
        host = self._pinned[0][:n] if n <= len(self._pinned[0]) else _pinned(n)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return OnDevice(tokens, host, ready, failed)


def _pinned(n: int) -> torch.Tensor:
    # page-locked: a non_blocking device-to-host copy into it returns at once (pageable memory would wait)
    return torch.empty(n, dtype=torch.long, pin_memory=True)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        log.warning("triton is not installed: GPU decode falls back to gathered SDPA (slower)")
        return False
    return True
