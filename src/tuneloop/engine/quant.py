"""Quantized decoder linears: weight-only int8 (gpt-fast's WeightOnlyInt8Linear) and W8A8 FP8.

Decode at small batch is bound by reading the weights: int8 weights halve the bytes, so batch-1
decode gets up to ~2x faster. Each output channel keeps one symmetric scale (max |w| / 127). The
product is `F.linear(x, w.to(x.dtype)) * scale`; on the GPU it runs under torch.compile with
coordinate-descent tuning, so Inductor rewrites a one-row matmul (batch-1 decode) as a reduction and
fuses the int8 -> bf16 conversion into it: the weights are read once, as int8. Larger batches get
a dequantized copy then cuBLAS (more bytes than bf16: this is a latency option, not a throughput one).
Embeddings and lm_head stay in the model dtype.

FP8 (W8A8, e4m3) for GPUs with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper): weights
quantized once with one scale per output channel, activations quantized per token at run time (one
scale per row: max |x| maps to 448, one compiled kernel), both multiplied by `torch._scaled_mm` with
the two scale vectors applied in the GEMM's epilogue. Half the weight bytes of bf16 and the FP8
tensor cores: on an H100 (Llama-3-8B shape) batch-1 decode 174 vs 153 tokens/s and 256 requests
1.24-1.37x bf16, where int8 gave 0.99x and 0.68x. Everything stays on the device with static shapes
(no host sync), so decode steps replay in CUDA graphs. Not offered, measured per layer on the same
card (benchmarks/fp8_linear_gpu.py): weight-only FP8 (dequantized in a compiled matmul, as int8) is
as slow as int8 beyond one row and only 4% faster than bf16 at one row, where W8A8 is 14% faster;
torchao's Float8DynamicActivationFloat8WeightConfig runs the same torch._scaled_mm behind a tensor
subclass with unfused activation quantization: 0.54-0.75x of ours at every size, slower than bf16
at one row. `fp8_linear_reference` is the same math in fp32 on any device: the CPU tests check the
quantization with it, the GPU tests check `torch._scaled_mm` against it.
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


# ---------------------------------------------------------------- FP8 (W8A8)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (L4, L40S) and Hopper (H100, H200)


def fp8_unsupported(device: str) -> str | None:
    """Why quantization="fp8" cannot run on this device, or None when it can."""
    hint = "use quantization='int8' (weight-only, any device) or 'none'"
    if not device.startswith("cuda"):
        return (
            f"quantization='fp8' runs FP8 matmuls (torch._scaled_mm) that need an NVIDIA GPU of compute "
            f"capability >= 8.9 (L4, L40S, H100, H200); this engine runs on {device}: {hint}"
        )
    cap = torch.cuda.get_device_capability(torch.device(device))
    if cap < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(torch.device(device))
        return (
            f"quantization='fp8' needs FP8 tensor cores (compute capability >= 8.9: L4, L40S, H100, H200); "
            f"{device} is {name}, compute capability {cap[0]}.{cap[1]}: {hint}"
        )
    return None


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (M, K) e4m3 and (M, 1) fp32 scales, symmetric: each row's max |x| maps to 448.

    A zero row gets a tiny scale (the clamp) and quantizes to zeros."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, quant: Any
) -> torch.Tensor:
    """(M, K) x (N, K) e4m3 with (1, N) fp32 weight scales -> (M, N) in x's dtype, on FP8 tensor cores."""
    xq, x_scale = quant(x)
    # the second operand column-major (weight.t() of a row-major (N, K)): what cuBLASLt's FP8 GEMM takes
    return torch._scaled_mm(
        xq, weight.t(), scale_a=x_scale, scale_b=scale, bias=bias, out_dtype=x.dtype, use_fast_accum=True
    )


def fp8_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The same product in fp32 from the same quantized operands (any device): the oracle."""
    xq, x_scale = quantize_rows(x)
    y = (xq.float() @ weight.float().t()) * x_scale * scale
    return (y if bias is None else y + bias.float()).to(x.dtype)


_COMPILED_QUANT: dict[str, Any] = {}


def _quant(compile: bool) -> Any:
    if not compile:
        return quantize_rows
    if not _COMPILED_QUANT:
        # one fused kernel (row max, divide, cast) instead of six: they add up at decode time
        _COMPILED_QUANT["fn"] = torch.compile(quantize_rows, dynamic=True)
    return _COMPILED_QUANT["fn"]


class Fp8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, compile: bool):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if self.out_features % 16 or self.in_features % 16:
            # torch._scaled_mm's (cuBLASLt's) FP8 GEMM needs both dims divisible by 16
            raise ValueError(
                f"FP8 needs in and out features divisible by 16 (torch._scaled_mm); this linear is "
                f"{self.out_features} x {self.in_features}"
            )
        w = weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (N, 1)
        self.register_buffer("weight", (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8))  # (N, K) row-major
        self.register_buffer("scale", scale.t().contiguous())  # (1, N) fp32, as _scaled_mm takes it
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.use_compiled = compile  # (not `compile`: that is nn.Module.compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:  # the engine builds fp8 on FP8 GPUs only; other callers (tests) get the oracle
            return fp8_linear_reference(x, self.weight, self.scale, self.bias)
        # _scaled_mm adds a bf16/fp16 bias in its epilogue, and none with an fp32 output
        fused = self.bias is not None and x.dtype != torch.float32
        y = fp8_linear(x, self.weight, self.scale, self.bias if fused else None, _quant(self.use_compiled))
        return y + self.bias if self.bias is not None and not fused else y


@torch.no_grad()
def quantize_fp8(model: nn.Module, compile: bool = True) -> nn.Module:
    """Replace every decoder linear with an Fp8Linear, layer by layer, in place. The caller checks the
    device first (fp8_unsupported); a linear whose shape the FP8 GEMM cannot take is named in the error."""
    dtype = model.embed_tokens.weight.dtype
    for i, layer in enumerate(model.layers):
        for path in LINEARS:
            parent_name, name = path.split(".")
            parent = getattr(layer, parent_name)
            linear = getattr(parent, name)
            try:
                setattr(parent, name, Fp8Linear(linear.weight, linear.bias, dtype, compile))
            except ValueError as e:
                raise ValueError(
                    f"quantization='fp8': layers.{i}.{path}: {e}; use quantization='int8' or 'none' "
                    "for this model"
                ) from None
            del linear
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runner sizes the KV cache from the free memory next
    return model


def quantize(model: nn.Module, method: str, compile: bool) -> nn.Module:
    """EngineConfig.quantization -> the model's decoder linears replaced in place ("none": as it is)."""
    if method == "int8":
        return quantize_int8(model, compile=compile)
    if method == "fp8":
        return quantize_fp8(model, compile=compile)
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
