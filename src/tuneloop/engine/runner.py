"""What the engine needs of a model runner, and the part every runner shares.

A runner turns a scheduled batch into next tokens in three phases, so each can be timed, replaced
or failed on its own:
  prepare(batch)  host work: token ids, positions, block tables, attention metadata -> a step input
                  (on the device, queued without waiting for the GPU)
  run(inputs)     the model: logits of the rows that sample (and of every row for prompt logprobs)
  sample(...)     next tokens: on the host (`sample`, with logprobs and penalties) or left on the
                  device (`sample_on_device`, async scheduling: the next step reads them there)
Nothing here changes a sequence or a KV block's bookkeeping: a step that raises can be re-run
(engine.py). Two runners: `ModelRunner` (native models, paged KV cache, model_runner.py) and
`HFRunner` (any other causal LM through transformers, hf_runner.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from tuneloop.engine import sizing
from tuneloop.engine.config import EngineConfig
from tuneloop.engine.sampler import Sampled, Sampler, prompt_logprobs
from tuneloop.engine.scheduler import Scheduled
from tuneloop.engine.sizing import Device
from tuneloop.models.formats import folder_format

log = logging.getLogger("tuneloop.engine")


class Logits(NamedTuple):
    sampling: torch.Tensor  # (S, V): the last position of each row that samples, in batch order
    prompt: torch.Tensor | None  # (N, V): every computed position, when prompt logprobs are asked


class StepInput(Protocol):
    batch: list[Scheduled]


@dataclass
class OnDevice:
    """Tokens sampled by a step launched ahead: on the device now, on the host once `ready` fired."""

    tokens: torch.Tensor  # (S,) int64 on the device: the next step's input ids are read from here
    host: torch.Tensor  # (S,) its copy in pinned host memory (the same tensor on the CPU)
    ready: torch.cuda.Event | None  # None on the CPU
    failed: dict[int, str]  # row -> why its sampling raised (its token is never used)

    def wait(self) -> list[int]:
        """The one wait of the async loop: the host reads the step's tokens."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


class Runner(Protocol):
    """The engine's view of a model runner (see the module docstring)."""

    cfg: EngineConfig  # the config with what it left open decided for this device and model
    device: str
    vocab_size: int
    max_model_len: int
    num_blocks: int
    model: Any
    sampler: Sampler
    lora: Any  # LoRAManager, set by the engine when adapters are loaded
    shares_blocks: bool  # K/V blocks can be shared between sequences (prefix caching)
    reads_device_ids: bool  # a step can read input ids on the device (async scheduling)
    serves_lora: bool

    def prepare(self, batch: list[Scheduled]) -> StepInput: ...

    def run(self, inputs: StepInput) -> Logits: ...

    def sample(self, logits: Logits, inputs: StepInput) -> Sampled: ...

    def sample_on_device(self, logits: Logits, inputs: StepInput) -> OnDevice: ...

    def forget(self, request_id: str) -> None: ...

    def discard_step(self, request_id: str) -> None: ...


class RunnerBase:
    """Sizing (config decisions, KV blocks) and the sample phase, for every runner."""

    native = True  # our own model code (sizing.py decides varlen prefill and LoRA graphs for it)
    shares_blocks = True
    reads_device_ids = True
    serves_lora = True

    def __init__(self, cfg: EngineConfig, device: str, dtype: torch.dtype, model: Any, probe: Device):
        self.device, self.dtype, self.model = device, dtype, model
        mc = model.config
        self.num_layers = mc.num_hidden_layers
        self.kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        self.head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        self.vocab_size = mc.vocab_size
        self.max_model_len = cfg.max_model_len or getattr(mc, "max_position_embeddings", None) or 2048
        # what the config left to the engine (None / "auto"), decided for this device and model;
        # the engine reads the decided copy (self.cfg), `given` keeps what the user set
        self.given = cfg
        cfg = self.cfg = sizing.resolve(cfg, probe, native=self.native)
        self.num_blocks = self._num_blocks()
        cfg = self.cfg = sizing.bound_by_cache(cfg, self.given, self.num_blocks)
        chosen = sizing.describe(cfg, self.given)
        if chosen:
            log.info("engine settings for %s: %s", probe.name or probe.kind, chosen)
        self.max_blocks_per_seq = -(-self.max_model_len // cfg.block_size)
        self.sampler = Sampler(device)
        self.lora: Any = None

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
            budget = int((free - activations - self._reserved_bytes()) * cfg.kv_cache_fraction)
        else:
            budget = 2**30
        blocks = budget // (self.bytes_per_token * cfg.block_size)
        if blocks < 2:
            raise ValueError(f"no room for a KV cache ({budget / 2**20:.0f} MiB available)")
        log.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            blocks,
            cfg.block_size,
            blocks * cfg.block_size * self.bytes_per_token / 2**30,
        )
        return blocks

    def _reserved_bytes(self) -> int:
        """Device memory the runner allocates after the cache is sized (kept out of its budget)."""
        return 0

    # ------------------------------------------------------------ sample

    def sample(self, logits: Logits, inputs: StepInput) -> Sampled:
        """Next tokens (and logprobs, prompt logprobs) on the host; the rows whose sampling raised."""
        seqs = [item.seq for item in inputs.batch if item.samples]
        prompt_lp = prompt_logprobs(inputs.batch, logits.prompt) if logits.prompt is not None else {}
        if not seqs:
            return Sampled([], [], {}, prompt_lp)
        return self.sampler(logits.sampling, seqs)._replace(prompt_logprobs=prompt_lp)

    def sample_on_device(self, logits: Logits, inputs: StepInput) -> OnDevice:
        raise NotImplementedError(f"{type(self).__name__} reads every input id on the host")

    def forget(self, request_id: str) -> None:
        """The request is gone: drop everything kept for it (its seeded generator, any cache)."""
        self.sampler.forget(request_id)
        self.discard_step(request_id)

    def discard_step(self, request_id: str) -> None:
        """A step with this request raised: drop what that step may have half written (the seeded
        generator stays: the re-run must draw what the step would have drawn)."""


def check_servable(folder: str) -> None:
    """Exports the engine cannot run (ONNX graphs, packed int4, GGUF) fail here, by name, not deep in a loader."""
    kind = folder_format(folder)
    if kind in ("onnx", "int4", "gguf"):
        what = {"onnx": "an ONNX export", "int4": "a packed int4 export", "gguf": "a GGUF export"}[kind]
        raise ValueError(
            f"{folder} is {what}, which the engine does not serve; serve the merged bf16 version it was "
            "exported from (its registry parent), or evaluate this one with `tuneloop eval`"
        )


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
