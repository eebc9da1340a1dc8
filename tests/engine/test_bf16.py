"""bf16 serving keeps transformers' numerics: rotary frequencies stay fp32 after the cast."""

import torch

from tuneloop.engine import LLMEngine


def test_rotary_frequencies_stay_fp32_in_a_bf16_engine(tiny_llama):
    eng = LLMEngine.from_pretrained(tiny_llama, dtype="bfloat16", kv_cache_gib=0.01)
    assert next(eng.runner.model.parameters()).dtype == torch.bfloat16
    assert eng.runner.model.rotary.inv_freq.dtype == torch.float32
    out = eng.generate([[5, 6, 7, 8]], None)[0]
    assert len(out.token_ids) >= 1
