"""Weight-only int8 for the decoder's linear layers (gpt-fast's WeightOnlyInt8Linear).

Decode at small batch is bound by reading the weights: int8 weights halve the bytes, so batch-1
decode gets up to ~2x faster. Each output channel keeps one symmetric scale (max |w| / 127). The
product is `F.linear(x, w.to(x.dtype)) * scale`; on the GPU it runs under torch.compile with
coordinate-descent tuning, so Inductor rewrites a one-row matmul (batch-1 decode) as a reduction and
fuses the int8 -> bf16 conversion into it: the weights are read once, as int8. Larger batches get
a dequantized copy then cuBLAS (more bytes than bf16: this is a latency option, not a throughput one).
Embeddings and lm_head stay in the model dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype)) * scale  # (N, in) x (out, in) int8 -> (N, out)


_COMPILED: dict[str, Any] = {}


def _compiled() -> Any:
    if not _COMPILED:
        # coordinate_descent_tuning: Inductor's mm decomposition for one-row inputs (a GEMV it fuses
        # the dequant into) is gated on it, as in gpt-fast
        _COMPILED["fn"] = torch.compile(
            int8_linear, dynamic=True, options={"coordinate_descent_tuning": True}
        )
    return _COMPILED["fn"]


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, compile: bool):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127  # (out,)
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.out_features, self.in_features = weight.shape
        self.use_compiled = compile  # (not `compile`: that is nn.Module.compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = _compiled() if self.use_compiled and x.is_cuda else int8_linear
        y = fn(x, self.weight, self.scale)
        return y + self.bias if self.bias is not None else y


@torch.no_grad()
def quantize_int8(model: nn.Module, compile: bool = True) -> nn.Module:
    """Replace every decoder linear with an Int8Linear, layer by layer (the bf16 copy of one matrix
    at a time is the only extra memory), in place."""
    dtype = model.embed_tokens.weight.dtype
    for layer in model.layers:
        for path in LINEARS:
            parent_name, name = path.split(".")
            parent = getattr(layer, parent_name)
            linear = getattr(parent, name)
            setattr(parent, name, Int8Linear(linear.weight, linear.bias, dtype, compile))
            del linear
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runner sizes the KV cache from the free memory next
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the decoder linears' weights (and scales)."""
    total = 0
    for layer in model.layers:
        for path in LINEARS:
            m = layer.get_submodule(path)
            total += sum(
                t.numel() * t.element_size() for t in (m.weight, getattr(m, "scale", None)) if t is not None
            )
    return total
