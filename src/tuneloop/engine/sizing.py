"""The settings an `EngineConfig` leaves to the engine (None or "auto"), decided once the device and model are known.

What a user gets from `LLMEngine.from_pretrained(folder)` or `tuneloop serve --model X` without
tuning is decided here, so each choice says what it was measured against:

- `max_num_seqs` / `max_num_batched_tokens`: on CUDA as vLLM sizes its own (EngineArgs
  .get_batch_defaults): GPUs of >= 70 GiB other than the A100 (H100, H200, MI300) get a larger step
  budget, since their compute saturates only at large batches; smaller GPUs keep 2,048 tokens a step.
  Sequences are capped at the largest captured decode graph (`max_graph_batch`, 256): rows beyond
  it decode eagerly, which costs more than a longer queue. Both are then bounded by the KV cache
  (a running sequence holds at least one block; see `bound_by_cache`). On an H100 (8B shape,
  256 x (128 + 128)), 64 / 2,048 gave 6.3k tokens/s and 256 / 4,096 11.8k (BENCHMARKS.md, issue 21).
  On the CPU: 64 / 2,048 (the step's host work grows with the batch and there is no graph to amortise it).
- `prefill_attention`: "varlen" (one FlashAttention varlen call over the packed prompt chunks) where
  it runs (CUDA, bf16/fp16, torch >= 2.10, native models): +18% over padded at 256 requests on an
  H100; "padded" elsewhere (on the CPU varlen is an exact per-sequence loop: no faster).
- `lora_in_graph`: on where decode steps replay CUDA graphs (adapters in fixed slot buffers): 8
  adapters at 0.89x of the base model against 0.21x with adapter steps run eagerly (H100).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from tuneloop.engine.config import EngineConfig

log = logging.getLogger("tuneloop.engine")

GiB = 2**30
LARGE_GPU_BYTES = 70 * GiB  # vLLM's line between its two CUDA tiers


@dataclasses.dataclass(frozen=True)
class Device:
    """What the defaults depend on: where the engine runs and what it can do there."""

    kind: str  # "cuda" or "cpu" (or another torch device type)
    total_bytes: int = 0  # device memory (CUDA)
    name: str = ""  # e.g. "NVIDIA H100 80GB HBM3"
    graphs: bool = False  # decode steps will replay CUDA graphs (Triton present, not enforce_eager)
    varlen: bool = False  # FlashAttention varlen runs for this model's dtype and head size

    @classmethod
    def probe(cls, device: str, graphs: bool, varlen: bool) -> Device:
        if not device.startswith("cuda"):
            return cls(kind=device.split(":")[0])
        props = torch.cuda.get_device_properties(torch.device(device))
        return cls("cuda", int(props.total_memory), props.name, graphs, varlen)

    @property
    def large_gpu(self) -> bool:
        return self.kind == "cuda" and self.total_bytes >= LARGE_GPU_BYTES and "a100" not in self.name.lower()


def resolve(cfg: EngineConfig, device: Device, native: bool) -> EngineConfig:
    """`cfg` with every automatic setting decided; explicit settings are kept as given."""
    cuda = device.kind == "cuda"
    seqs, tokens = (64, 2048) if not cuda else (min(256, cfg.max_graph_batch), 2048)
    if device.large_gpu:
        tokens = 8192
    prefill = cfg.prefill_attention
    if prefill == "auto":
        prefill = "varlen" if (native and device.varlen) else "padded"
    lora_in_graph = cfg.lora_in_graph
    if lora_in_graph is None:
        lora_in_graph = native and device.graphs and not cfg.enforce_eager
    return dataclasses.replace(
        cfg,
        max_num_seqs=cfg.max_num_seqs or seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens or tokens,
        prefill_attention=prefill,
        lora_in_graph=lora_in_graph,
    )


def bound_by_cache(cfg: EngineConfig, given: EngineConfig, num_blocks: int) -> EngineConfig:
    """Fewer sequences when the KV cache cannot give each one a block (a small cache, a huge model).

    Only a value the engine chose is lowered; one the user set is kept (and preemption copes)."""
    if given.max_num_seqs is None and cfg.max_num_seqs > num_blocks:
        log.info(
            "max_num_seqs %d -> %d: the KV cache holds %d blocks", cfg.max_num_seqs, num_blocks, num_blocks
        )
        return dataclasses.replace(cfg, max_num_seqs=max(1, num_blocks))
    return cfg


def describe(cfg: EngineConfig, given: EngineConfig) -> str:
    """One log line of the settings the engine chose (what the user did not set)."""
    chosen = [
        f"{f}={getattr(cfg, f)}"
        for f in ("max_num_seqs", "max_num_batched_tokens", "prefill_attention", "lora_in_graph")
        if getattr(given, f) in (None, "auto")
    ]
    return ", ".join(chosen)
