"""Any other HF causal LM, through transformers itself: correct, slower (no paged cache, one sequence a pass).

Each sequence keeps its own transformers KV cache; the engine's block accounting still runs, so
scheduling, preemption and limits behave the same. Native models (models/llama.py) are the fast path.
"""

from __future__ import annotations

from typing import Any

import torch


class HFFallback:
    def __init__(self, folder: str, dtype: torch.dtype, device: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.config = self.model.config
        self.device = device
        self.caches: dict[str, tuple[Any, int]] = {}  # request id -> (past_key_values, tokens in it)

    def release(self, request_id: str) -> None:
        self.caches.pop(request_id, None)

    @torch.inference_mode()
    def last_hidden_logits(self, seq: Any, n: int) -> torch.Tensor:
        """Logits (V,) after computing tokens [num_computed, num_computed + n) of `seq`."""
        start = seq.num_computed
        past, length = self.caches.get(seq.request_id, (None, 0))
        if past is None or length != start:  # new, preempted, or a prefix the block manager reused
            past, start = None, 0
        ids = torch.tensor([seq.token_ids[start : seq.num_computed + n]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
        self.caches[seq.request_id] = (out.past_key_values, seq.num_computed + n)
        return out.logits[0, -1].float()
