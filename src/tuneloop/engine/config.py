"""Engine settings, checked at construction; derived sizes (KV blocks) are computed once by the runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EngineConfig:
    model: str  # a local HF folder (resolve references before building the engine)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    block_size: int = 16
    # sequences in one step, and the token budget of one step (prefill chunks + decodes); None: sized
    # for the device (sizing.py: 256 and 8,192 on an H100-class GPU, 64 and 2,048 on the CPU)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    kv_cache_fraction: float = 0.9  # GPU: share of the free memory (after weights) for the KV cache
    kv_cache_gib: float | None = None  # fixed KV cache size; default on CPU: 1 GiB
    prefix_caching: bool = True
    max_loras: int = 8  # adapters loaded at once
    # GPU: decode steps with LoRA adapters replay CUDA graphs too: adapters live in fixed slot buffers
    # of rank max_lora_rank and each row gathers its slot's A/B (lora.py). None: on wherever decode
    # steps replay CUDA graphs (8 adapters: 0.89x of the base model vs 0.21x eager, H100)
    lora_in_graph: bool | None = None
    max_lora_rank: int = 16  # with lora_in_graph: the largest adapter rank a slot holds
    compile_ops: bool = True  # GPU: fuse RMSNorm / rotary / SiLU-mul with torch.compile
    enforce_eager: bool = False  # GPU: no CUDA graphs for decode steps (as vLLM's flag)
    max_graph_batch: int = 256  # GPU: largest decode batch replayed as a CUDA graph
    # GPU: split-KV decode (flash-decoding, kernels/paged_decode.py) for steps whose (sequence, KV head)
    # programs leave SMs idle: a long context is read by up to 16 programs. On an H100 (8B shape, CUDA
    # graphs): 1 x 32k prompt 22.0 -> 46.9 tokens/s, 8 x 8k 255 -> 297, 1 x 128 153 -> 154 (BENCHMARKS.md);
    # a batch that fills the SMs on its own is not split (decode_splits), so large batches pay nothing
    split_kv_decode: bool = True
    # schedule step N+1 while step N runs, sampled ids stay on the device (engine.py); None: on for
    # CUDA, off on the CPU (nothing to overlap there, and outputs would come one step later)
    async_scheduling: bool | None = None
    # overlap decode batches of up to this many rows (None: any). On an H100 (8B, fresh prompts per
    # run) async decode was faster at every size measured: 1 row +5.6%, 32 clients ITL -8%, 256 rows
    # 13.0k vs 11.3k tokens/s (BENCHMARKS.md, engine GPU); the knob is for hosts where it is not
    async_max_batch: int | None = None
    # int8: weight-only int8 decoder linears (per-output-channel scales), ~half the weight bytes, so
    # faster small-batch decode; fp8: W8A8 e4m3 through torch._scaled_mm (per-channel weight and
    # per-token activation scales), CUDA compute capability >= 8.9 only; native models only (quant.py)
    quantization: Literal["none", "int8", "fp8"] = "none"
    # attention of prompt chunks: "padded" pads every row to the step's longest (one SDPA call, the
    # same on CPU and GPU); "varlen" packs them, one FlashAttention varlen call on CUDA in fp16/bf16
    # (torch >= 2.10), an exact per-sequence SDPA loop elsewhere (attention.py); "auto": varlen where
    # the FlashAttention kernel runs, padded elsewhere
    prefill_attention: Literal["auto", "padded", "varlen"] = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.block_size in (1, 2, 4, 8, 16, 32, 64, 128), "block_size must be a power of two up to 128"),
            (self.max_num_seqs is None or self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (self.max_loras >= 1, "max_loras must be >= 1"),
            (self.max_lora_rank >= 1, "max_lora_rank must be >= 1"),
            (
                not (self.lora_in_graph and self.enforce_eager),
                "lora_in_graph replays CUDA graphs, which enforce_eager turns off; set only one",
            ),
            (self.max_graph_batch >= 1, "max_graph_batch must be >= 1"),
            (self.async_max_batch is None or self.async_max_batch >= 1, "async_max_batch must be >= 1"),
            (
                self.max_num_batched_tokens is None or self.max_num_batched_tokens >= 1,
                "max_num_batched_tokens must be >= 1",
            ),
            (self.quantization in ("none", "int8", "fp8"), "quantization must be none, int8 or fp8"),
            (
                self.prefill_attention in ("auto", "padded", "varlen"),
                "prefill_attention must be auto, padded or varlen",
            ),
            (0 < self.kv_cache_fraction <= 1, "kv_cache_fraction must be in (0, 1]"),
            (self.kv_cache_gib is None or self.kv_cache_gib > 0, "kv_cache_gib must be > 0"),
            (
                self.dtype in ("auto", "float32", "bfloat16", "float16"),
                "dtype must be auto, float32, bfloat16 or float16",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
