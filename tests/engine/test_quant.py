"""Weight-only int8 (EngineConfig.quantization="int8") against the full-precision engine, on the CPU."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import EngineConfig, LLMEngine, SamplingParams
from tuneloop.engine.quant import Int8Linear, int8_linear, weight_bytes

from .test_engine import prompts

SCORE = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, prompt_logprobs=0)


def engine(folder, quantization: str) -> LLMEngine:
    return LLMEngine.from_pretrained(folder, kv_cache_gib=0.01, block_size=4, quantization=quantization)


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
    a, b = full.generate(ps, SCORE), int8.generate(ps, SCORE)
    lp_a = torch.tensor([next(iter(e.values())) for o in a for e in o.prompt_logprobs[1:]])
    lp_b = torch.tensor([next(iter(e.values())) for o in b for e in o.prompt_logprobs[1:]])
    assert ((lp_a - lp_b).norm() / lp_a.norm()).item() < 0.01  # log-probs of every prompt token
    same = sum(
        x == y for o, p in zip(a, b, strict=True) for x, y in zip(o.token_ids, p.token_ids, strict=True)
    )
    assert same >= 0.75 * sum(len(o.token_ids) for o in a)  # most greedy tokens equal
    first = sum(o.token_ids[0] == p.token_ids[0] for o, p in zip(a, b, strict=True))
    assert first >= 5


def test_quantization_is_checked():
    with pytest.raises(ValueError, match="quantization must be none or int8"):
        EngineConfig(model="x", quantization="int4")  # type: ignore[arg-type]
