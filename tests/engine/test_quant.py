"""Weight-only int8 and W8A8 FP8 (EngineConfig.quantization) against the full-precision engine.

int8 runs everywhere. FP8 runs on CUDA GPUs with FP8 tensor cores only: on the CPU its quantization
math is checked through quant.fp8_linear_reference (the oracle the GPU tests hold torch._scaled_mm
to), and an fp8 engine on the CPU must refuse to build."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import EngineConfig, LLMEngine, SamplingParams
from tuneloop.engine.models.llama import random_llama
from tuneloop.engine.quant import (
    FP8,
    FP8_MAX,
    Fp8Linear,
    Int8Linear,
    fp8_linear_reference,
    int8_linear,
    quantize_fp8,
    quantize_rows,
    weight_bytes,
)

from .test_engine import prompts

SCORE = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, prompt_logprobs=0)


def engine(folder, quantization: str, **kw) -> LLMEngine:
    kw.setdefault("device", "cpu")  # the CPU tests stay on the CPU (fp32) on a GPU machine too
    return LLMEngine.from_pretrained(folder, kv_cache_gib=0.01, block_size=4, quantization=quantization, **kw)


def agreement(a, b) -> tuple[float, float, int]:
    """(relative error of the prompt-token log-probs, share of equal greedy tokens, equal first tokens)."""
    lp_a = torch.tensor([next(iter(e.values())) for o in a for e in o.prompt_logprobs[1:]])
    lp_b = torch.tensor([next(iter(e.values())) for o in b for e in o.prompt_logprobs[1:]])
    same = sum(
        x == y for o, p in zip(a, b, strict=True) for x, y in zip(o.token_ids, p.token_ids, strict=True)
    )
    first = sum(o.token_ids[0] == p.token_ids[0] for o, p in zip(a, b, strict=True))
    return ((lp_a - lp_b).norm() / lp_a.norm()).item(), same / sum(len(o.token_ids) for o in a), first


def test_int8_linear_is_close_to_the_float_matmul():
    torch.manual_seed(0)
    w, x = torch.randn(64, 32), torch.randn(5, 32)
    q = Int8Linear(w, None, torch.float32, compile=False)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (64,)
    ref = x @ w.T
    assert ((q(x) - ref).norm() / ref.norm()).item() < 0.01
    assert torch.equal(q(x), int8_linear(x, q.weight, q.scale))


def test_int8_engine_scores_and_generates_like_the_full_precision_one(tiny_llama):
    full, int8 = engine(tiny_llama, "none"), engine(tiny_llama, "int8")
    assert isinstance(int8.runner.model.layers[0].mlp.down_proj, Int8Linear)
    # int8 (1 byte) + a scale per row, against fp32 here: a quarter; against bf16 it would be half
    assert weight_bytes(int8.runner.model) < 0.27 * weight_bytes(full.runner.model)
    ps = prompts(6, seed=50, lengths=(8, 24))
    logprob_err, same, first = agreement(full.generate(ps, SCORE), int8.generate(ps, SCORE))
    assert logprob_err < 0.01  # log-probs of every prompt token
    assert same >= 0.75  # most greedy tokens equal
    assert first >= 5


def test_quantization_is_checked():
    with pytest.raises(ValueError, match="quantization must be none, int8 or fp8"):
        EngineConfig(model="x", quantization="int4")  # type: ignore[arg-type]
    assert EngineConfig(model="x", quantization="fp8").quantization == "fp8"


# ---------------------------------------------------------------- FP8


def test_fp8_row_quantization_round_trips_within_e4m3_precision():
    torch.manual_seed(0)
    # rows of very different magnitudes, one all zeros: each gets its own scale
    x = torch.randn(6, 64) * torch.tensor([1e-4, 1e-2, 1.0, 30.0, 1e3, 0.0])[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == FP8 and scale.shape == (6, 1) and scale.dtype == torch.float32
    amax = x.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(scale[:5], amax[:5] / FP8_MAX)  # max |x| of a row maps to 448
    back = q.float() * scale
    assert torch.equal(back[5], torch.zeros(64))  # a zero row stays zero (no NaN from 0 / 0)
    # round to nearest e4m3: half an ulp, 2^-4 of |x| for normals, 2^-10 of the scale for subnormals
    bound = x.abs() * 2**-4 + scale * 2**-10 + 1e-12
    assert ((back - x).abs() <= bound).all()
    assert torch.allclose(back.abs().amax(dim=1), amax[:, 0], rtol=1e-6)  # the row max is exact


def test_fp8_linear_keeps_one_scale_per_output_channel():
    torch.manual_seed(0)
    w = torch.randn(48, 32) * 0.02
    w[7] *= 1000  # one loud output channel must not crush the others' precision
    layer = Fp8Linear(w, None, torch.float32, compile=False)
    assert layer.weight.dtype == FP8 and layer.weight.shape == (48, 32)
    assert layer.scale.shape == (1, 48) and layer.scale.dtype == torch.float32  # (1, N) for _scaled_mm
    assert torch.allclose(layer.scale[0], w.abs().amax(dim=1) / FP8_MAX)
    deq = layer.weight.float() * layer.scale.t()
    assert (((deq - w).norm(dim=1) / w.norm(dim=1)) < 0.04).all()  # every channel, the quiet ones too


def test_fp8_linear_reference_is_close_to_the_float_matmul():
    torch.manual_seed(0)
    w, b, x = torch.randn(64, 32), torch.randn(64), torch.randn(5, 32)
    layer = Fp8Linear(w, b, torch.float32, compile=False)
    ref = x @ w.T + b
    y = layer(x)  # on the CPU: the reference path
    assert ((y - ref).norm() / ref.norm()).item() < 0.05  # e4m3 on both operands: ~3% here
    assert torch.equal(y, fp8_linear_reference(x, layer.weight, layer.scale, layer.bias))


def test_fp8_reference_matches_torch_scaled_mm_where_the_cpu_has_it():
    torch.manual_seed(0)
    layer = Fp8Linear(torch.randn(32, 64), None, torch.float32, compile=False)
    x = torch.randn(3, 64)
    xq, x_scale = quantize_rows(x)
    try:
        got = torch._scaled_mm(
            xq, layer.weight.t(), scale_a=x_scale, scale_b=layer.scale, out_dtype=torch.float32
        )
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._scaled_mm has no CPU kernel here: {e}")
    ref = fp8_linear_reference(x, layer.weight, layer.scale, None)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fp8_rejects_a_shape_the_fp8_gemm_cannot_take_and_names_the_layer():
    shape = dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=3,
                 num_key_value_heads=1, vocab_size=64, max_position_embeddings=64)  # fmt: skip
    model = random_llama(shape, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.down_proj.*divisible by 16.*48 x 72.*int8"):
        quantize_fp8(model, compile=False)


def test_fp8_engine_on_the_cpu_fails_at_build_and_says_what_to_use(tiny_llama):
    with pytest.raises(ValueError) as e:
        engine(tiny_llama, "fp8")
    message = str(e.value)
    assert "compute capability >= 8.9" in message and "cpu" in message
    assert "quantization='int8'" in message  # what to use instead


def test_fp8_math_scores_and_generates_like_the_full_precision_engine(tiny_llama):
    """The engine's model with its linears swapped for Fp8Linear, on the CPU through the oracle path:
    the quality the GPU test then asks of torch._scaled_mm."""
    full, fp8 = engine(tiny_llama, "none"), engine(tiny_llama, "none")
    quantize_fp8(fp8.runner.model, compile=False)
    assert isinstance(fp8.runner.model.layers[0].self_attn.qkv_proj, Fp8Linear)
    assert weight_bytes(fp8.runner.model) < 0.27 * weight_bytes(full.runner.model)  # 1 byte vs fp32
    ps = prompts(6, seed=50, lengths=(8, 24))
    logprob_err, same, first = agreement(full.generate(ps, SCORE), fp8.generate(ps, SCORE))
    assert logprob_err < 0.01  # 0.001 measured
    assert same >= 0.6  # 0.73 measured: random tiny weights give near-tied logits
    assert first >= 4


needs_fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9)",
)


@pytest.mark.gpu
@needs_fp8_gpu
def test_gpu_fp8_scaled_mm_matches_the_reference_without_a_host_sync():
    torch.manual_seed(0)
    layer = Fp8Linear(torch.randn(256, 128), torch.randn(256), torch.bfloat16, compile=True).cuda()
    for rows in (1, 3, 16, 200):  # decode batches (no padding of M needed) and a prefill chunk
        x = torch.randn(rows, 128, device="cuda", dtype=torch.bfloat16)
        y, ref = layer(x), fp8_linear_reference(x.float(), layer.weight, layer.scale, layer.bias)
        assert y.dtype == torch.bfloat16 and y.shape == (rows, 256)
        assert ((y.float() - ref).norm() / ref.norm()).item() < 0.01  # bf16 output rounding
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # CUDA-graph capturable: nothing waits for the GPU
    try:
        layer(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@needs_fp8_gpu
def test_gpu_fp8_engine_scores_and_generates_like_bf16(tiny_llama):
    kw = dict(device="cuda", dtype="bfloat16", max_num_seqs=8)
    full, fp8 = engine(tiny_llama, "none", **kw), engine(tiny_llama, "fp8", **kw)
    assert isinstance(fp8.runner.model.layers[0].mlp.gate_up_proj, Fp8Linear)
    assert fp8.runner.graphs is not None or fp8.runner.cfg.enforce_eager  # decode replays CUDA graphs
    assert weight_bytes(fp8.runner.model) < 0.55 * weight_bytes(full.runner.model)  # 1 byte vs 2
    ps = prompts(6, seed=50, lengths=(8, 24))
    logprob_err, same, first = agreement(full.generate(ps, SCORE), fp8.generate(ps, SCORE))
    assert logprob_err < 0.03
    assert same >= 0.6
    assert first >= 4
