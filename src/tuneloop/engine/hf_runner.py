"""Any other HF causal LM, through transformers itself: correct, slower (no paged cache, one sequence a pass).

Each sequence keeps its own transformers KV cache; the engine's block accounting still runs, so
scheduling, preemption and limits behave the same. No prefix sharing (a block's K/V are not ours to
share), no adapters, no async scheduling (every input id is read on the host). Native models
(model_runner.py) are the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneloop.engine.config import EngineConfig
from tuneloop.engine.runner import Logits, RunnerBase, pick_dtype
from tuneloop.engine.scheduler import Scheduled
from tuneloop.engine.sequence import Sequence
from tuneloop.engine.sizing import Device
from tuneloop.models.loading import pick_device


@dataclass
class HFInput:
    batch: list[Scheduled]  # transformers reads each row's ids itself (`last_hidden_logits`)
    device_ids: int = 0


class HFRunner(RunnerBase):
    native = False
    shares_blocks = False
    reads_device_ids = False
    serves_lora = False

    def __init__(self, cfg: EngineConfig):
        if cfg.quantization != "none":
            raise ValueError(f"quantization={cfg.quantization!r} needs a native (Llama-family) model")
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        from transformers import (
            AutoModelForCausalLM,  # heavy (~1.5 s): only for families without a native path
        )

        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        super().__init__(cfg, device, dtype, model, Device.probe(device, graphs=False, varlen=False))
        self.caches: dict[str, tuple[Any, int]] = {}  # request id -> (past_key_values, tokens in it)

    def discard_step(self, request_id: str) -> None:
        self.caches.pop(request_id, None)  # a step that raised may have moved it half way

    def prepare(self, batch: list[Scheduled]) -> HFInput:
        return HFInput(batch)

    @torch.inference_mode()
    def run(self, inputs: HFInput) -> Logits:
        rows = [self.last_hidden_logits(item.seq, item.num_tokens) for item in inputs.batch]
        keep = [r for r, item in zip(rows, inputs.batch, strict=True) if item.samples]
        return Logits(torch.stack(keep) if keep else torch.zeros((0, self.vocab_size)), None)

    def last_hidden_logits(self, seq: Sequence, n: int) -> torch.Tensor:
        """Logits (V,) after computing tokens [num_computed, num_computed + n) of `seq`."""
        start = seq.num_computed
        past, length = self.caches.get(seq.request_id, (None, 0))
        if past is None or length != start:  # new, preempted, or a prefix the block manager reused
            past, start = None, 0
        ids = torch.tensor([seq.token_ids[start : seq.num_computed + n]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
        self.caches[seq.request_id] = (out.past_key_values, seq.num_computed + n)
        return out.logits[0, -1].float()
