"""Multi-LoRA: many PEFT adapters over one base model, chosen per request, mixed in one batch.

Each adapter's A/B matrices stay separate from the base weights (nothing is merged), so any set of
adapters can share a step: the base matmul runs once for all tokens, then the adapters add their
deltas. Per fused module, the A matrices of every loaded adapter are stacked along the rank
(A: (S*R, in)) and the B matrices side by side with the scale folded in (B: (out, S*R)); a token
keeps only its own adapter's rank columns through a 0/1 mask:

    delta = ((x @ A^T) * mask[token's slot]) @ B^T

Two matmuls per module whatever the number of adapters in the batch: that is the GPU path, where a
loop over adapters with gather/scatter launched ~1,000 tiny kernels per step on an 8B model (24x
slower than the base). The masked matmuls do S times the LoRA FLOPs, which a CPU (compute-bound,
small models) pays for, so the CPU keeps the per-adapter loop over each adapter's own tokens.
q/k/v and gate/up are fused in the base model: their parts occupy consecutive rank blocks of a
slot, and B is block-diagonal over the parts. Stacks are rebuilt when adapters load or unload.

Slots (EngineConfig.lora_in_graph): a CUDA graph replays fixed addresses and shapes, so the stacks
above (rebuilt, resized per load) cannot be captured. With `max_rank` set, the manager also keeps
per fused module persistent buffers of S' = max_loras + 1 slots, A (S', W, in) and B (out, S', W),
W = parts * max_rank, ranks zero-padded, scale folded into B; slot 0 stays zero ("no adapter").
Loading copies into a free slot in place, unloading zeroes it: the buffers never move. A step then
needs only a per-row slot id (N,), and one of two formulas, both of static shapes whatever the
adapters of the batch, so capturable (cuda_graph.py):

    gather: delta = B[:, slot] @ (A[slot] @ x)        # bmm per row: (N, out, W) @ (N, W, in) @ (N, in, 1)
    masked: delta = ((x @ A^T) * onehot(slot)) @ B^T  # A (S'*W, in), B (out, S'*W): two GEMMs

gather moves one adapter copy per row (written, then read), masked reads every slot once and does
S' times the LoRA FLOPs. Decode is memory-bound, so `slot_math="auto"` takes gather while 2N < S'
(a few rows) and masked above. Meant for decode rows (one token each), not long prompt chunks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# fused module in the engine -> the PEFT module names it is made of, in output order
FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "o_proj": ("o_proj",),
    "down_proj": ("down_proj",),
}
KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass
class Adapter:
    name: str
    rank: int
    scale: float
    # (layer, peft module) -> (A (r, in), B (out, r))
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class LoRAManager:
    def __init__(self, model: Any, max_loras: int, max_rank: int | None = None):
        self.model = model
        self.max_rank = max_rank  # set: adapters are also copied into fixed slot buffers
        # (layer, fused module) -> (A (S+1, W, in), B (S+1, out, W)); allocated at the first load
        self.slot_buffers: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.slot_of: dict[str, int] = {}  # adapter -> its slot in slot_buffers (1..max_loras)
        self.max_loras = max_loras
        self.adapters: dict[str, Adapter] = {}
        self.layer_index = {id(layer): i for i, layer in enumerate(model.layers)}
        self.out_sizes = _out_sizes(model)
        self.slots: dict[str, int] = {}
        self._stacks: dict | None = None
        # auto (stacked on CUDA, looped on CPU) | stacked | looped | slots (needs max_rank)
        self.mode = "auto"
        self.slot_math = "auto"  # the formula over the slot buffers: auto | gather | masked

    def load(self, name: str, folder: str | Path) -> Adapter:
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
        if self.max_rank is not None and rank > self.max_rank:
            raise ValueError(
                f"adapter {name!r} has rank {rank} > max_lora_rank {self.max_rank}; raise max_lora_rank"
            )
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
        self._stacks = None
        if self.max_rank is not None:
            self._fill_slot(adapter)
        return adapter

    def unload(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise ValueError(f"adapter {name!r} is not loaded")
        self._stacks = None
        slot = self.slot_of.pop(name, None)
        if slot is not None:
            for A, B in self.slot_buffers.values():
                A[slot].zero_()
                B[:, slot].zero_()

    def _allocate_slots(self) -> None:
        p = next(self.model.parameters())
        n, in_sizes = self.max_loras + 1, _in_sizes(self.model)
        for layer in range(len(self.layer_index)):
            for fused, parts in FUSED.items():
                width = len(parts) * self.max_rank
                self.slot_buffers[(layer, fused)] = (
                    torch.zeros((n, width, in_sizes[fused]), dtype=p.dtype, device=p.device),
                    torch.zeros((sum(self.out_sizes[fused]), n, width), dtype=p.dtype, device=p.device),
                )

    def _fill_slot(self, adapter: Adapter) -> None:
        """Copy an adapter into a free slot of the persistent buffers, in place (addresses unchanged)."""
        if not self.slot_buffers:
            self._allocate_slots()
        slot = min(set(range(1, self.max_loras + 1)) - set(self.slot_of.values()))
        r = self.max_rank
        for (layer, fused), (A, B) in self.slot_buffers.items():
            A[slot].zero_()
            B[:, slot].zero_()
            row = 0
            for j, (part, size) in enumerate(zip(FUSED[fused], self.out_sizes[fused], strict=True)):
                ab = adapter.weights.get((layer, part))
                if ab is not None:
                    c = j * r
                    A[slot, c : c + adapter.rank].copy_(ab[0])
                    B[row : row + size, slot, c : c + adapter.rank].copy_(ab[1] * adapter.scale)
                row += size
        self.slot_of[adapter.name] = slot

    def row_slots(self, batch: list[Any]) -> torch.Tensor:
        """(N,) host int64: each token's slot in the persistent buffers, 0 for the base model."""
        slots: list[int] = []
        for item in batch:
            slots.extend([self.slot_of[item.seq.lora] if item.seq.lora is not None else 0] * item.num_tokens)
        return torch.tensor(slots, dtype=torch.long)

    def slotted(self, row_slots: torch.Tensor) -> BatchLoRA:
        """A fixed-shape BatchLoRA over the slot buffers; row_slots (N,) on the device may be a graph's buffer."""
        assert self.max_rank is not None, "slot buffers need max_rank (EngineConfig.lora_in_graph)"
        if not self.slot_buffers:
            self._allocate_slots()
        return BatchLoRA(self, row_slots=row_slots)

    def stacks(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, int]]:
        """(layer, fused module) -> (A (S*R, in), B (out, S*R), R); slot s = s-th loaded adapter."""
        if self._stacks is None:
            self._stacks = self._build()
        return self._stacks

    def _build(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, int]]:
        adapters = list(self.adapters.values())
        self.slots = {a.name: s for s, a in enumerate(adapters)}
        if not adapters:
            return {}
        r = max(a.rank for a in adapters)
        out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, int]] = {}
        for layer in range(len(self.layer_index)):
            for fused, parts in FUSED.items():
                found = [a.weights[(layer, p)] for a in adapters for p in parts if (layer, p) in a.weights]
                if not found:
                    continue
                sizes, width = self.out_sizes[fused], len(parts) * r
                A = found[0][0].new_zeros((len(adapters) * width, found[0][0].shape[1]))
                B = found[0][1].new_zeros((sum(sizes), len(adapters) * width))
                for s, a in enumerate(adapters):
                    row = 0
                    for j, (part, size) in enumerate(zip(parts, sizes, strict=True)):
                        ab = a.weights.get((layer, part))
                        if ab is not None:
                            c = s * width + j * r
                            A[c : c + a.rank] = ab[0]
                            B[row : row + size, c : c + a.rank] = ab[1] * a.scale
                        row += size
                out[(layer, fused)] = (A, B, width)
        return out

    def for_batch(self, batch: list[Any]) -> BatchLoRA | None:
        """Which adapter each token of this step's flat batch uses (None: base model only)."""
        if not any(item.seq.lora is not None for item in batch):
            return None
        device = next(self.model.parameters()).device
        if self.mode == "slots":
            return self.slotted(self.row_slots(batch).to(device))
        stacked = self.mode == "stacked" or (self.mode == "auto" and device.type == "cuda")
        if stacked:
            stacks = self.stacks()
            slots: list[int] = []
            for item in batch:
                slots.extend(
                    [self.slots[item.seq.lora] if item.seq.lora is not None else -1] * item.num_tokens
                )
            return BatchLoRA(self, stacks=stacks, token_slots=torch.tensor(slots, device=device))
        groups: dict[str, list[int]] = {}
        offset = 0
        for item in batch:
            if item.seq.lora is not None:
                groups.setdefault(item.seq.lora, []).extend(range(offset, offset + item.num_tokens))
            offset += item.num_tokens
        return BatchLoRA(self, groups={n: torch.tensor(i, device=device) for n, i in groups.items()})


class BatchLoRA:
    def __init__(
        self,
        manager: LoRAManager,
        stacks: dict | None = None,
        token_slots: torch.Tensor | None = None,
        groups: dict[str, torch.Tensor] | None = None,
        row_slots: torch.Tensor | None = None,
    ):
        self.manager, self.stacks, self.token_slots, self.groups = manager, stacks, token_slots, groups
        self.row_slots = row_slots  # (N,) slot per token: the fixed-shape slot path
        self._onehot: dict[torch.dtype, torch.Tensor] = {}
        self._masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def onehot(self, n_slots: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, S', 1) 1.0 at each token's slot: the masked slot formula's mask, built once per step."""
        if dtype not in self._onehot:
            ids = torch.arange(n_slots, device=self.row_slots.device)
            self._onehot[dtype] = (self.row_slots[:, None] == ids[None, :]).to(dtype)[:, :, None]
        return self._onehot[dtype]

    def mask(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, S*width) 1.0 where a column belongs to the token's adapter; a base token's row is all 0."""
        key = (width, dtype)
        if key not in self._masks:
            n_slots = len(self.manager.slots)
            col_slot = torch.arange(n_slots, device=self.token_slots.device).repeat_interleave(width)
            self._masks[key] = (self.token_slots[:, None] == col_slot[None, :]).to(dtype)
        return self._masks[key]

    def at(self, layer: Any) -> LayerLoRA:
        return LayerLoRA(self, self.manager.layer_index[id(layer)])


class LayerLoRA:
    def __init__(self, batch: BatchLoRA, layer: int):
        self.batch, self.layer = batch, layer

    def __call__(self, fused: str, x: torch.Tensor) -> torch.Tensor | float:
        """Delta of fused module `fused` for every token: (N, out); 0 for base tokens / untargeted modules."""
        return self.add(fused, x, None)

    def add(self, fused: str, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | float:
        """y + the delta of fused module `fused` (y None: the delta alone). The second LoRA matmul adds
        into y in the same kernel (addmm): a decode step of an 8B model runs 128 LoRA modules, and at
        a few microseconds each, every separate small kernel shows in its time."""
        if self.batch.row_slots is not None:
            return self._slotted(fused, x, y)
        if self.batch.stacks is None:
            delta = self._looped(fused, x)
            return delta if y is None else y + delta
        stack = self.batch.stacks.get((self.layer, fused))
        if stack is None:
            return 0.0 if y is None else y
        A, B, width = stack
        return _expand(F.linear(x, A) * self.batch.mask(width, x.dtype), B, y)

    def _slotted(self, fused: str, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        A, B = self.batch.manager.slot_buffers[(self.layer, fused)]  # (S', W, in), (out, S', W)
        idx, math = self.batch.row_slots, self.batch.manager.slot_math
        (n_slots, width, _), n = A.shape, x.shape[0]
        if math == "gather" or (math == "auto" and 2 * n < n_slots):
            xa = torch.bmm(A.index_select(0, idx), x.unsqueeze(-1))  # (N, W, in) @ (N, in, 1) -> (N, W, 1)
            delta = torch.bmm(B.index_select(1, idx).transpose(0, 1), xa).squeeze(
                -1
            )  # (N, out, W) @ (N, W, 1)
            return delta if y is None else y + delta
        xa = F.linear(x, A.view(n_slots * width, -1)).view(n, n_slots, width)  # every slot: (N, S', W)
        xa = xa * self.batch.onehot(n_slots, x.dtype)  # keep the token's own slot
        return _expand(xa.view(n, n_slots * width), B.view(B.shape[0], n_slots * width), y)  # (N, out)

    def _looped(self, fused: str, x: torch.Tensor) -> torch.Tensor:
        m = self.batch.manager
        sizes = m.out_sizes[fused]
        delta = x.new_zeros((x.shape[0], sum(sizes)))
        for name, idx in (self.batch.groups or {}).items():
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


def _expand(xa: torch.Tensor, B: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """xa @ B^T, added to y in one kernel when y is given (xa (N, S*W), B (out, S*W))."""
    if y is None:
        return F.linear(xa, B)
    if y.dim() == 2:
        return torch.addmm(y, xa, B.t())
    return y + F.linear(xa, B)


def slot_buffer_bytes(model: Any, max_loras: int, max_rank: int, dtype: torch.dtype) -> int:
    """Device bytes of the slot buffers (lora_in_graph), all layers: kept out of the KV cache budget."""
    ins, outs = _in_sizes(model), _out_sizes(model)
    per_layer = sum(len(p) * max_rank * (ins[f] + sum(outs[f])) for f, p in FUSED.items())
    return (max_loras + 1) * per_layer * model.config.num_hidden_layers * torch.finfo(dtype).bits // 8


def _in_sizes(model: Any) -> dict[str, int]:
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    h = c.hidden_size
    return {
        "qkv_proj": h,
        "gate_up_proj": h,
        "o_proj": c.num_attention_heads * d,
        "down_proj": c.intermediate_size,
    }


def _out_sizes(model: Any) -> dict[str, tuple[int, ...]]:
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "qkv_proj": (c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d),
        "gate_up_proj": (c.intermediate_size, c.intermediate_size),
        "o_proj": (c.hidden_size,),
        "down_proj": (c.hidden_size,),
    }
