"""Multi-LoRA against PEFT: base and several adapters mixed in one batch, each equal to its reference."""

from __future__ import annotations

from types import SimpleNamespace

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


# looped: the CPU's default; stacked: the GPU's; slots: the fixed-shape gather of lora_in_graph
@pytest.mark.parametrize("mode", ["looped", "stacked", "slots:gather", "slots:masked"])
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
    eng = LLMEngine.from_pretrained(
        tiny_llama, block_size=4, kv_cache_gib=0.01, lora_in_graph=mode.startswith("slots")
    )
    eng.load_lora("a", tmp_path / "a")
    eng.load_lora("b", tmp_path / "b")
    eng.lora.mode, _, math = mode.partition(":")
    eng.lora.slot_math = math or "auto"
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


def _items(which: list[str | None], tokens: list[int]) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(seq=SimpleNamespace(lora=w), num_tokens=n) for w, n in zip(which, tokens, strict=True)
    ]


def test_slot_deltas_equal_stacked_and_looped_for_three_ranks_and_base_rows(tiny_llama, tmp_path):
    from tuneloop.engine.lora import FUSED

    for name, seed, rank, targets in [("a", 1, 2, ["q_proj", "v_proj", "down_proj"]),
                                      ("b", 2, 8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]),
                                      ("c", 3, 4, ["o_proj", "up_proj"])]:  # fmt: skip
        make_adapter(tiny_llama, tmp_path / name, seed, targets, rank=rank)
    eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01, lora_in_graph=True,
                                    max_lora_rank=8)  # fmt: skip
    for name in "abc":
        eng.load_lora(name, tmp_path / name)
    lora = eng.lora
    batch = _items(["c", None, "a", "b", None, "a", "b"], [1, 2, 1, 3, 1, 1, 1])  # prompt chunks and decodes
    model = eng.runner.model
    in_sizes = {"qkv_proj": model.config.hidden_size, "gate_up_proj": model.config.hidden_size,
                "o_proj": model.layers[0].self_attn.o_proj.in_features,
                "down_proj": model.config.intermediate_size}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    deltas = {}
    for mode in ("looped", "stacked", "gather", "masked"):
        lora.mode, lora.slot_math = ("slots", mode) if mode in ("gather", "masked") else (mode, "auto")
        per_batch = lora.for_batch(batch)
        deltas[mode] = {}
        for layer in model.layers:
            at = per_batch.at(layer)
            for k, fused in enumerate(FUSED):
                x = torch.randn(10, in_sizes[fused], generator=g.manual_seed(k))
                d = at(fused, x)
                deltas[mode][(id(layer), fused)] = (
                    d if isinstance(d, torch.Tensor) else torch.zeros(10, 1) + d
                )
    base_rows = [1, 2, 7]  # the tokens of the two base rows: no delta at all
    for key, ref in deltas["looped"].items():
        stacked, gather, masked = deltas["stacked"][key], deltas["gather"][key], deltas["masked"][key]
        torch.testing.assert_close(gather, ref.expand_as(gather), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked, gather, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stacked.expand_as(gather), gather, rtol=1e-5, atol=1e-5)
        assert gather[base_rows].abs().max() == 0 and masked[base_rows].abs().max() == 0
    assert any(d.abs().max() > 0 for d in deltas["gather"].values())


def test_slot_buffers_stay_in_place_across_load_and_unload(tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "down_proj"], rank=4)
    make_adapter(tiny_llama, tmp_path / "b", 2, ["v_proj", "up_proj"], rank=2)
    make_adapter(tiny_llama, tmp_path / "big", 3, ["q_proj"], rank=16)
    eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01, lora_in_graph=True,
                                    max_lora_rank=8, max_loras=2)  # fmt: skip
    eng.load_lora("a", tmp_path / "a")
    lora = eng.lora
    ptrs = {k: (A.data_ptr(), B.data_ptr()) for k, (A, B) in lora.slot_buffers.items()}
    A, B = lora.slot_buffers[(0, "qkv_proj")]
    assert A.shape[0] == B.shape[1] == 3 and A.shape[1] == B.shape[2] == 3 * 8  # 2 slots + the zero slot
    assert lora.slot_of == {"a": 1} and A[0].abs().max() == 0 and A[1].abs().max() > 0
    eng.load_lora("b", tmp_path / "b")
    assert lora.slot_of == {"a": 1, "b": 2}
    eng.unload_lora("a")
    assert A[1].abs().max() == 0 and B[:, 1].abs().max() == 0  # the freed slot is zero again
    with pytest.raises(ValueError, match="max_lora_rank 8"):
        eng.load_lora("big", tmp_path / "big")
    eng.load_lora("a2", tmp_path / "a")
    assert lora.slot_of == {"b": 2, "a2": 1}  # the freed slot is reused
    assert {k: (A.data_ptr(), B.data_ptr()) for k, (A, B) in lora.slot_buffers.items()} == ptrs
    from tuneloop.engine.lora import slot_buffer_bytes

    held = sum(
        A.numel() * A.element_size() + B.numel() * B.element_size() for A, B in lora.slot_buffers.values()
    )
    assert (
        slot_buffer_bytes(eng.runner.model, 2, 8, eng.runner.dtype) == held
    )  # what the KV budget keeps free


def test_lora_in_graph_config_is_checked():
    from tuneloop.engine.config import EngineConfig

    with pytest.raises(ValueError, match="enforce_eager"):
        EngineConfig("m", lora_in_graph=True, enforce_eager=True)
    with pytest.raises(ValueError, match="max_lora_rank"):
        EngineConfig("m", max_lora_rank=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_lora_graph_replay_equals_eager(tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"], rank=4)
    make_adapter(
        tiny_llama, tmp_path / "b", 2, ["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"], rank=8
    )
    ps = prompts(6, seed=31)
    which = [None, "a", "b", "a", None, "b"]

    def run(**kw):
        # fp32: graph and eager run the same kernels; the eager engine takes the stacked path
        eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01, device="cuda",
                                        dtype="float32", compile_ops=False, max_num_seqs=8, **kw)  # fmt: skip
        eng.load_lora("a", tmp_path / "a")
        eng.load_lora("b", tmp_path / "b")
        return eng, [o.token_ids for o in eng.generate(ps, GREEDY, lora=which)]

    graphed, got = run(lora_in_graph=True)
    if graphed.runner.graphs is None:
        pytest.skip("needs triton (the decode kernel and its CUDA graphs)")
    assert graphed.runner.graphs.lora_graphs, "no decode step replayed a LoRA graph"
    _, expected = run(enforce_eager=True)
    assert got == expected
    _, base_graphs = run()  # lora_in_graph off: adapter steps run eagerly (stacked)
    assert got == base_graphs
