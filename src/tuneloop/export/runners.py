"""Prefill/step runners over a PyTorch model or an ONNX Runtime session, and one greedy loop.

Every backend is timed and scored through the same loop, so a latency difference is the
backend's, not the harness's. Batch size is 1: the latency a single chat user sees.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from tuneloop.models.loading import CausalLM
from tuneloop.models.onnx import OnnxCausalLM

if TYPE_CHECKING:
    import numpy as np
    from peft import PeftModel
    from transformers import Cache, PreTrainedModel

OnnxState: TypeAlias = "tuple[list[np.ndarray], int]"  # the presents, and how many positions they hold


class TorchRunner:
    """Greedy steps on an HF model (plain, PEFT-wrapped or quantized) with its KV cache."""

    def __init__(self, model: PreTrainedModel | PeftModel):
        self.model = model
        self.cache_arg = cache_argument(model)

    def prefill(self, ids: list[int]) -> tuple[int, Cache]:
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids], device=self.model.device)
            out = self.model(input_ids=x, use_cache=True)
        return int(out.logits[0, -1].argmax()), getattr(out, self.cache_arg)

    def step(self, token: int, state: Cache) -> tuple[int, Cache]:
        import torch

        with torch.inference_mode():
            x = torch.tensor([[token]], device=self.model.device)
            out = self.model(input_ids=x, use_cache=True, **{self.cache_arg: state})
        return int(out.logits[0, -1].argmax()), getattr(out, self.cache_arg)

    def sync(self) -> None:
        import torch

        if str(self.model.device).startswith("cuda"):
            torch.cuda.synchronize()


class OnnxRunner:
    """Greedy steps on ONNX Runtime, feeding the `present.*` outputs back as the past."""

    def __init__(self, model: OnnxCausalLM):
        self.model = model

    def prefill(self, ids: list[int]) -> tuple[int, OnnxState]:
        import numpy as np

        x = np.array([ids], dtype=np.int64)
        logits, past = self.model.run(x, np.ones_like(x), self.model.empty_past(1))
        return int(logits[0, -1].argmax()), (past, len(ids))

    def step(self, token: int, state: OnnxState) -> tuple[int, OnnxState]:
        import numpy as np

        past, length = state
        mask = np.ones((1, length + 1), dtype=np.int64)
        logits, past = self.model.run(np.array([[token]], dtype=np.int64), mask, past)
        return int(logits[0, -1].argmax()), (past, length + 1)

    def sync(self) -> None:
        pass


def cache_argument(model: PreTrainedModel | PeftModel) -> str:
    """`cache` (transformers >= 5.2x) or `past_key_values` (before): the name this model's forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def runner_for(model: CausalLM) -> TorchRunner | OnnxRunner:
    return OnnxRunner(model) if isinstance(model, OnnxCausalLM) else TorchRunner(model)


@dataclass
class Generation:
    tokens: list[int]
    ttft_s: float  # prompt in -> first new token chosen
    step_s: list[float] = field(default_factory=list)  # one per later token


def greedy(
    runner: TorchRunner | OnnxRunner, ids: list[int], max_new: int, eos: set[int] | None = None
) -> Generation:
    """Greedy decoding; stops at an `eos` token (pass None to always make `max_new` tokens)."""
    t = time.perf_counter()
    token, state = runner.prefill(ids)
    runner.sync()
    gen = Generation([token], time.perf_counter() - t)
    while len(gen.tokens) < max_new and not (eos and token in eos):
        t = time.perf_counter()
        token, state = runner.step(token, state)
        runner.sync()
        gen.step_s.append(time.perf_counter() - t)
        gen.tokens.append(token)
    return gen
