"""Multi-LoRA: many PEFT adapters over one base model, chosen per request, mixed in one batch.

Each adapter's A/B matrices stay separate from the base weights (nothing is merged), so any set of
adapters can share a step: the base matmul runs once for all tokens, then each adapter adds
x[idx] @ A^T @ B^T * scale for its own tokens. Adapters load and unload at runtime.
q/k/v and gate/up are fused in the base model, so their deltas are concatenated to match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# fused module in the engine -> the PEFT module names it is made of, in output order
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj"),
         "o_proj": ("o_proj",), "down_proj": ("down_proj",)}  # fmt: skip
KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass
class Adapter:
    name: str
    rank: int
    scale: float
    # (layer, peft module) -> (A (r, in), B (out, r))
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class LoRAManager:
    def __init__(self, model: Any, max_loras: int):
        self.model = model
        self.max_loras = max_loras
        self.adapters: dict[str, Adapter] = {}
        self.layer_index = {id(layer): i for i, layer in enumerate(model.layers)}
        self.out_sizes = _out_sizes(model)

    def load(self, name: str, folder: str | Path) -> Adapter:
        from safetensors.torch import load_file

        folder = Path(folder)
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} is already loaded; unload it first")
        if len(self.adapters) >= self.max_loras:
            raise ValueError(f"{self.max_loras} adapters are loaded (max_loras); unload one first")
        cfg = json.loads((folder / "adapter_config.json").read_text())
        if cfg.get("use_dora"):
            raise ValueError(
                f"adapter {name!r} uses DoRA, which the engine does not serve; merge it with `tuneloop export --merge`"
            )
        rank = int(cfg["r"])
        scale = cfg["lora_alpha"] / (rank**0.5 if cfg.get("use_rslora") else rank)
        adapter = Adapter(name, rank, scale)
        p = next(self.model.parameters())
        pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
            m = KEY.search(key)
            if m is None:
                raise ValueError(f"adapter {name!r}: tensor {key} is not a LoRA weight of a decoder layer")
            pairs.setdefault((int(m[1]), m[2]), {})[m[3]] = tensor.to(p.device, p.dtype)
        adapter.weights = {k: (v["A"], v["B"]) for k, v in pairs.items()}
        self.adapters[name] = adapter
        return adapter

    def unload(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise ValueError(f"adapter {name!r} is not loaded")

    def for_batch(self, batch: list[Any]) -> BatchLoRA | None:
        """Token index groups per adapter for this step's flat batch (None: base model only)."""
        groups: dict[str, list[int]] = {}
        offset = 0
        for item in batch:
            if item.seq.lora is not None:
                groups.setdefault(item.seq.lora, []).extend(range(offset, offset + item.num_tokens))
            offset += item.num_tokens
        if not groups:
            return None
        device = next(self.model.parameters()).device
        return BatchLoRA(self, {n: torch.tensor(i, device=device) for n, i in groups.items()})


class BatchLoRA:
    def __init__(self, manager: LoRAManager, groups: dict[str, torch.Tensor]):
        self.manager, self.groups = manager, groups

    def at(self, layer: Any) -> LayerLoRA:
        return LayerLoRA(self, self.manager.layer_index[id(layer)])


class LayerLoRA:
    def __init__(self, batch: BatchLoRA, layer: int):
        self.batch, self.layer = batch, layer

    def __call__(self, fused: str, x: torch.Tensor) -> torch.Tensor:
        """Delta of fused module `fused` for every token: (N, out); zero for base-model tokens."""
        m = self.batch.manager
        sizes = m.out_sizes[fused]
        delta = x.new_zeros((x.shape[0], sum(sizes)))
        for name, idx in self.batch.groups.items():
            adapter = m.adapters[name]
            xs = x[idx]
            parts = []
            for part, size in zip(FUSED[fused], sizes, strict=True):
                ab = adapter.weights.get((self.layer, part))
                parts.append(
                    xs.new_zeros((xs.shape[0], size))
                    if ab is None
                    else (xs @ ab[0].T) @ ab[1].T * adapter.scale
                )
            delta[idx] = torch.cat(parts, dim=-1)
        return delta


def _out_sizes(model: Any) -> dict[str, tuple[int, ...]]:
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "qkv_proj": (c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d),
        "gate_up_proj": (c.intermediate_size, c.intermediate_size),
        "o_proj": (c.hidden_size,),
        "down_proj": (c.hidden_size,),
    }
