"""FP8 choices for the engine's decoder linears, one Llama-3-8B layer's four matmuls, on one GPU.

What EngineConfig.quantization="fp8" should be, measured per layer at the decode batch sizes (1 to
256 rows, replayed as a CUDA graph as decode steps are) and a prefill step (4,096 rows, eager):

- bf16: F.linear (the baseline)
- fp8: ours (quant.Fp8Linear: compiled per-token quantization + torch._scaled_mm, rowwise scales)
- fp8_exact_accum: the same without use_fast_accum (error vs speed)
- torchao: Float8DynamicActivationFloat8WeightConfig(PerRow()) on nn.Linear, when torchao imports
- fp8_weight_only: e4m3 weights dequantized in a compiled F.linear (as int8 below), bf16 activations
- int8: quant.Int8Linear (what quantization="int8" runs)

Also: the relative error of each against the fp32 product, and whether a decode step through ours
launches without a host sync. Results to $OUT/fp8_linear_gpu.json.

    PYTHONPATH=src python3 benchmarks/fp8_linear_gpu.py $OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.engine import quant

# (out, in) of qkv_proj, o_proj, gate_up_proj, down_proj in Llama-3-8B
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
DECODE_ROWS = [1, 16, 64, 256]
PREFILL_ROWS = 4096


def weight_only_fp8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w.to(x.dtype)) * scale


def variants(weights: list[torch.Tensor]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"bf16": [lambda x, w=w: F.linear(x, w) for w in weights]}
    fp8 = [quant.Fp8Linear(w, None, torch.bfloat16, compile=True) for w in weights]
    out["fp8"] = list(fp8)
    quant_fn = quant._quant(True)
    out["fp8_exact_accum"] = [
        lambda x, m=m: torch._scaled_mm(*_pair(quant_fn(x), m), out_dtype=x.dtype, use_fast_accum=False)
        for m in fp8
    ]
    wo = torch.compile(weight_only_fp8, dynamic=True, options={"coordinate_descent_tuning": True})
    out["fp8_weight_only"] = [lambda x, w=m.weight, s=m.scale.to(torch.bfloat16): wo(x, w, s) for m in fp8]
    out["int8"] = [quant.Int8Linear(w, None, torch.bfloat16, compile=True) for w in weights]
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        linears = nn.ModuleList(nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights)
        with torch.no_grad():
            for lin, w in zip(linears, weights, strict=True):
                lin.weight.copy_(w)
        linears = linears.to(device="cuda", dtype=torch.bfloat16)
        quantize_(
            linears,
            Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
        )
        out["torchao"] = list(linears)
    except Exception as e:  # a benchmark records why a candidate did not run
        print("torchao unavailable:", repr(e), flush=True)
    return out


def _pair(xq_scale: tuple[torch.Tensor, torch.Tensor], m: quant.Fp8Linear) -> tuple:
    xq, x_scale = xq_scale
    return xq, m.weight.t(), x_scale, m.scale


def layer(fns: list[Any], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [fn(x) for fn, x in zip(fns, xs, strict=True)]


def inputs(rows: int) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(rows)
    return [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=g) for _, k in SHAPES]


def time_graph(fns: list[Any], xs: list[torch.Tensor], reps: int = 10, iters: int = 20) -> float | str:
    """Microseconds for one layer's four matmuls, replayed in a CUDA graph (decode's path)."""
    try:
        for _ in range(3):
            layer(fns, xs)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                layer(fns, xs)
        graph.replay()
        torch.cuda.synchronize()
    except Exception as e:
        return f"capture failed: {e!r}"[:300]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return round(1000 * start.elapsed_time(end) / (iters * reps), 1)


def time_eager(fns: list[Any], xs: list[torch.Tensor], iters: int = 20) -> float:
    for _ in range(3):
        layer(fns, xs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        layer(fns, xs)
    end.record()
    torch.cuda.synchronize()
    return round(1000 * start.elapsed_time(end) / iters, 1)


def errors(all_fns: dict[str, list[Any]], weights: list[torch.Tensor]) -> dict:
    """Relative (Frobenius) error of each variant against the fp32 product, at 256 rows; and ours
    against quant.fp8_linear_reference (the same quantized operands in fp32: the CPU tests' oracle)."""
    xs = inputs(256)
    refs = [x.float() @ w.float().t() for x, w in zip(xs, weights, strict=True)]
    res: dict = {}
    for name, fns in all_fns.items():
        ys = layer(fns, xs)
        res[name] = round(
            max(((y.float() - r).norm() / r.norm()).item() for y, r in zip(ys, refs, strict=True)), 5
        )
    oracle = [
        quant.fp8_linear_reference(x, m.weight, m.scale, None)
        for x, m in zip(xs, all_fns["fp8"], strict=True)
    ]
    ys = layer(all_fns["fp8"], xs)
    res["fp8_vs_reference"] = round(
        max(((y.float() - o.float()).norm() / o.norm()).item() for y, o in zip(ys, oracle, strict=True)), 5
    )
    return res


def no_sync(fns: list[Any]) -> bool:
    xs = inputs(16)
    layer(fns, xs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(fns, xs)
        return True
    except RuntimeError:
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for n, k in SHAPES]
    all_fns = variants(weights)
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "us_per_layer": {}}
    res["errors_vs_fp32_at_256_rows"] = errors(all_fns, weights)
    print(res["errors_vs_fp32_at_256_rows"], flush=True)
    res["fp8_no_host_sync"] = no_sync(all_fns["fp8"])
    # one variant at a time, torchao last (dict order): a capture that fails can leave the CUDA
    # context unusable, and then only what came after it is lost
    timings = res["us_per_layer"]
    for name, fns in all_fns.items():
        for rows in DECODE_ROWS:
            timings.setdefault(f"graph_{rows}", {})[name] = time_graph(fns, inputs(rows))
        timings.setdefault(f"eager_{PREFILL_ROWS}", {})[name] = time_eager(fns, inputs(PREFILL_ROWS))
        timings.setdefault("eager_1", {})[name] = time_eager(fns, inputs(1))  # host overhead, no graph
        print(name, {k: v[name] for k, v in timings.items()}, flush=True)
        (out / "fp8_linear_gpu.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
