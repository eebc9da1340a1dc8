"""The engine against its oracle: greedy output token-identical to transformers `generate`."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.hf_runner import HFRunner

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def hf_greedy(folder, prompt: list[int], n: int) -> list[int]:
    model = _hf(str(folder))
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


_HF: dict[str, object] = {}


def _hf(folder: str):
    if folder not in _HF:
        _HF[folder] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return _HF[folder]


def prompts(n: int, seed: int = 0, lengths=(3, 11, 5, 19, 8, 26)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 500, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


def engine(folder, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("kv_cache_gib", 0.01)
    return LLMEngine.from_pretrained(folder, **kw)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_batched_greedy_equals_generate_for_each_family(tiny_model_factory, family):
    folder = tiny_model_factory(family)
    ps = prompts(4)
    outs = engine(folder).generate(ps, GREEDY)
    assert [o.token_ids for o in outs] == [hf_greedy(folder, p, 12) for p in ps]
    assert all(o.finish_reason == "length" and o.finished for o in outs)


def test_requests_arriving_at_different_steps_match_generate(tiny_llama):
    eng = engine(tiny_llama)
    ps = prompts(5, seed=1)
    done: dict[str, list[int]] = {}
    so_far: dict[str, list[int]] = {}
    ids = []
    for step in range(200):
        if step < len(ps) * 3 and step % 3 == 0:  # a new request every third step
            ids.append(eng.add_request(ps[step // 3], GREEDY).request_id)
        for out in eng.step():
            so_far.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                done[out.request_id] = so_far[out.request_id]
        if len(done) == len(ps):
            break
    assert [done[i] for i in ids] == [hf_greedy(tiny_llama, p, 12) for p in ps]


def test_prefix_cache_reuses_blocks_and_changes_nothing(tiny_llama):
    system = prompts(1, seed=2, lengths=(24,))[0]
    ps = [system + tail for tail in prompts(4, seed=3, lengths=(3, 6))]
    cached = engine(tiny_llama, prefix_caching=True)
    first = cached.generate(ps[:1], GREEDY)
    rest = cached.generate(ps[1:], GREEDY)
    plain = engine(tiny_llama, prefix_caching=False).generate(ps, GREEDY)
    assert [o.token_ids for o in first + rest] == [o.token_ids for o in plain]
    assert all(o.num_cached_tokens == 24 for o in rest)  # 6 full blocks of the shared prefix
    assert cached.stats().prefix_cache_hit_rate > 0.5
    assert plain[1].num_cached_tokens == 0


def test_multi_turn_chat_reuses_the_previous_turn(tiny_llama):
    eng = engine(tiny_llama)
    turn1 = prompts(1, seed=4, lengths=(10,))[0]
    out1 = eng.generate([turn1], GREEDY)[0]
    turn2 = turn1 + out1.token_ids + [7, 8, 9]
    out2 = eng.generate([turn2], GREEDY)[0]
    assert out2.num_cached_tokens >= 16  # the first turn's prompt and answer, in whole blocks
    assert out2.token_ids == hf_greedy(tiny_llama, turn2, 12)


def test_preemption_under_a_small_cache_keeps_outputs_identical(tiny_llama):
    ps = prompts(6, seed=5)
    small = engine(tiny_llama, kv_cache_gib=40 * 4 * 2 * 2 * 2 * 16 * 4 / 2**30)  # 40 blocks of 4 tokens
    outs = small.generate(ps, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    assert small.stats().preemptions > 0
    assert [o.token_ids for o in outs] == [hf_greedy(tiny_llama, p, 24) for p in ps]


def test_chunked_prefill_with_a_tiny_token_budget(tiny_llama):
    ps = prompts(3, seed=6, lengths=(30, 7, 22))
    outs = engine(tiny_llama, max_num_batched_tokens=8).generate(ps, GREEDY)
    assert [o.token_ids for o in outs] == [hf_greedy(tiny_llama, p, 12) for p in ps]


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny_llama):
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    p = prompts(1, seed=7)[0]
    alone = engine(tiny_llama).generate([p], params)[0].token_ids
    crowd = engine(tiny_llama).generate(
        [*prompts(3, seed=8), p], [SamplingParams(max_tokens=16, temperature=1.0)] * 3 + [params]
    )
    other = engine(tiny_llama).generate(
        [p], SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True)
    )[0]
    assert crowd[-1].token_ids == alone
    assert other.token_ids != alone


def test_stop_tokens_eos_and_max_tokens(tiny_llama):
    p = prompts(1, seed=9)[0]
    free = engine(tiny_llama).generate([p], GREEDY)[0].token_ids
    stop_at = free[3]
    out = engine(tiny_llama).generate(
        [p], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_at], ignore_eos=True)
    )[0]
    assert out.finish_reason == "stop" and out.token_ids == free[: free.index(stop_at) + 1]
    eng = engine(tiny_llama)
    eng.eos_ids = {free[0]}
    assert eng.generate([p], SamplingParams(max_tokens=12, temperature=0))[0].token_ids == [free[0]]


def test_abort_frees_the_blocks_at_once(tiny_llama):
    eng = engine(tiny_llama)
    seq = eng.add_request(prompts(1, lengths=(30,))[0], GREEDY)
    eng.step()
    used = eng.blocks.num_free
    assert eng.abort(seq.request_id) is True
    assert eng.blocks.num_free > used and not eng.has_unfinished()
    assert eng.abort(seq.request_id) is False


def test_logprobs_match_the_model_distribution(tiny_llama):
    p = prompts(1, seed=10)[0]
    out = engine(tiny_llama).generate(
        [p], SamplingParams(max_tokens=1, temperature=0, logprobs=3, prompt_logprobs=0, ignore_eos=True)
    )[0]
    with torch.no_grad():
        logits = _hf(str(tiny_llama))(torch.tensor([p])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    token = out.token_ids[0]
    assert out.logprobs[0][token] == pytest.approx(float(lp[-1, token]), abs=1e-4)
    assert len(out.logprobs[0]) == 3 or token in torch.topk(lp[-1], 3).indices.tolist()
    assert out.prompt_logprobs[0] is None
    assert out.prompt_logprobs[1][p[1]] == pytest.approx(float(lp[0, p[1]]), abs=1e-4)


def test_bad_requests_are_refused_with_reasons(tiny_llama):
    eng = engine(tiny_llama)
    with pytest.raises(ValueError, match="must not be empty"):
        eng.add_request([], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request([10**7], GREEDY)
    with pytest.raises(ValueError, match="exceeds max_model_len"):
        eng.add_request([5] * 600, GREEDY)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    tiny_cache = engine(tiny_llama, kv_cache_gib=8 * 4 * 2 * 2 * 2 * 16 * 4 / 2**30)
    with pytest.raises(ValueError, match="whole cache holds"):
        tiny_cache.add_request([5] * 20, SamplingParams(max_tokens=100))


@pytest.mark.slow
def test_default_model_batched_greedy_equals_generate(default_model):
    ps = prompts(3, seed=11, lengths=(12, 40, 7))
    outs = engine(default_model, kv_cache_gib=0.1, block_size=16).generate(
        ps, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    )
    assert [o.token_ids for o in outs] == [hf_greedy(default_model, p, 16) for p in ps]


def test_non_llama_model_runs_through_the_transformers_fallback(tiny_gpt2):
    folder = tiny_gpt2
    eng = engine(folder, max_num_batched_tokens=16)  # chunked prefill through the fallback too
    assert isinstance(eng.runner, HFRunner)
    ps = prompts(3, seed=12, lengths=(5, 21, 9))
    outs = eng.generate(ps, GREEDY)
    assert [o.token_ids for o in outs] == [hf_greedy(folder, p, 12) for p in ps]
    assert eng.runner.caches == {}  # released when the requests finished


def test_prompt_logprobs_survive_chunked_prefill_and_a_warm_prefix_cache(tiny_llama):
    p = prompts(1, seed=13, lengths=(23,))[0]
    eng = engine(tiny_llama, max_num_batched_tokens=8)  # the prompt is prefilled in 3 chunks
    eng.generate([p], GREEDY)  # warms the prefix cache with this very prompt
    out = eng.generate([p], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, ignore_eos=True))[
        0
    ]
    with torch.no_grad():
        lp = torch.log_softmax(_hf(str(tiny_llama))(torch.tensor([p])).logits[0].float(), -1)
    assert len(out.prompt_logprobs) == len(p) and out.prompt_logprobs[0] is None
    got = [out.prompt_logprobs[i][p[i]] for i in range(1, len(p))]
    assert got == pytest.approx([float(lp[i - 1, p[i]]) for i in range(1, len(p))], abs=1e-4)
