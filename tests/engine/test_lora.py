"""Multi-LoRA against PEFT: base and several adapters mixed in one batch, each equal to its reference."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneloop.engine import LLMEngine, SamplingParams

from .test_engine import GREEDY, prompts


def make_adapter(base, out, seed: int, targets, rank: int = 4):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=rank, lora_alpha=8, target_modules=targets)
    )
    with torch.no_grad():  # PEFT starts B at zero: randomize so the adapter changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    return model.eval()


def peft_greedy(model, prompt, n):
    out = model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("mode", ["looped", "stacked"])  # looped: the CPU's default; stacked: the GPU's
def test_mixed_adapters_in_one_batch_match_peft(tiny_llama, tmp_path, mode):
    a = make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"])
    b = make_adapter(
        tiny_llama,
        tmp_path / "b",
        2,
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        rank=8,  # ranks differ: the stacked path pads a to b's rank
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01)
    eng.load_lora("a", tmp_path / "a")
    eng.load_lora("b", tmp_path / "b")
    eng.lora.mode = mode
    ps = prompts(6, seed=30)
    which = [None, "a", "b", "a", None, "b"]
    outs = eng.generate(ps, GREEDY, lora=which)
    refs = {None: base, "a": a, "b": b}
    expected = [peft_greedy(refs[w], p, 12) for p, w in zip(ps, which, strict=True)]
    assert [o.token_ids for o in outs] == expected
    assert expected[1] != peft_greedy(base, ps[1], 12)  # the adapter really changes the output


def test_load_unload_at_runtime_and_bad_adapters(tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path / "a", 3, ["q_proj"])
    eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01)
    with pytest.raises(ValueError, match="unknown LoRA adapter 'a'"):
        eng.add_request([5, 6, 7], GREEDY, lora="a")
    eng.load_lora("a", tmp_path / "a")
    with pytest.raises(ValueError, match="already loaded"):
        eng.load_lora("a", tmp_path / "a")
    seq = eng.add_request([5, 6, 7], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True), lora="a")
    with pytest.raises(ValueError, match="serving requests"):
        eng.unload_lora("a")
    eng.abort(seq.request_id)
    eng.unload_lora("a")
    assert "a" not in eng.lora.adapters


def test_prefix_cache_does_not_share_blocks_between_base_and_adapter(tiny_llama, tmp_path):
    from tuneloop.engine import LLMEngine, SamplingParams

    make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "k_proj", "v_proj"])
    prompt = list(range(5, 45))  # 40 tokens: 10 full blocks of 4
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    def fresh():
        eng = LLMEngine.from_pretrained(tiny_llama, kv_cache_gib=0.01, block_size=4)
        eng.load_lora("a", tmp_path / "a")
        return eng

    alone = fresh().generate([prompt], greedy, lora=["a"])[0]
    eng = fresh()
    eng.generate([prompt], greedy)  # the base model's K/V of this prompt are now cached
    after = eng.generate([prompt], greedy, lora=["a"])[0]
    assert after.num_cached_tokens == 0 and after.token_ids == alone.token_ids
    again = eng.generate([prompt], greedy, lora=["a"])[0]  # the adapter's own blocks are shared
    assert again.num_cached_tokens > 0 and again.token_ids == alone.token_ids
