"""prefill_attention="varlen" against the padded path, its oracle: same attention, same greedy tokens.

On the CPU "varlen" runs the exact per-sequence SDPA path; the FlashAttention glue (cu_seqlens,
version adapter, bottom-right causality) is checked here with a reference kernel in torch's place,
and on a GPU (`-m gpu`) with the real kernel.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

import tuneloop.engine.attention as attn
from tuneloop.engine import EngineConfig, SamplingParams
from tuneloop.engine.attention import build_metadata, build_varlen_metadata, paged_attention

from .test_engine import engine, prompts

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
BS = 4


def batch(starts, counts, H=4, KVH=2, D=16, device="cpu", dtype=torch.float32, seed=0):
    """Random q/k/v of the new tokens, a cache already holding the context, disjoint block tables."""
    g = torch.Generator().manual_seed(seed)
    N, nblocks = sum(counts), sum(-(-(s + c) // BS) for s, c in zip(starts, counts, strict=True)) + 1
    tables, nxt = [], 1
    for s, c in zip(starts, counts, strict=True):
        n = -(-(s + c) // BS)
        tables.append(list(range(nxt + n - 1, nxt - 1, -1)))  # reversed: the gather must follow the table
        nxt += n
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    q, k, v = rnd(N, H, D), rnd(N, KVH, D), rnd(N, KVH, D)
    kc, vc = rnd(nblocks * BS, KVH, D), rnd(nblocks * BS, KVH, D)
    return q, k, v, kc, vc, tables


def run(meta, q, k, v, kc, vc, scale):
    return paged_attention(q, k, v, kc.clone(), vc.clone(), meta, scale)


CASES = [
    ([0, 0, 0], [5, 1, 9]),  # fresh prompts: keys are the new k/v, no gather
    ([0, 7, 12, 3], [6, 1, 4, 8]),  # chunks with cached context, a decode row among them
    ([16], [3]),
]


@pytest.mark.parametrize(("starts", "counts"), CASES)
def test_varlen_attention_equals_padded(starts, counts):
    q, k, v, kc, vc, tables = batch(starts, counts)
    padded = run(build_metadata(tables, starts, counts, BS, torch.device("cpu")), q, k, v, kc, vc, 0.25)
    meta = build_varlen_metadata(tables, starts, counts, BS, torch.device("cpu"), use_kernel=False)
    torch.testing.assert_close(run(meta, q, k, v, kc, vc, 0.25), padded, rtol=1e-5, atol=1e-5)
    assert (meta.key_slots is None) == (not any(starts))


def reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
    """torch's varlen_attn as documented (FlashAttention: causal aligned to the bottom right)."""
    assert kw.get("window_size") == (-1, 0) or kw.get("is_causal") is True
    assert q.shape[1] == k.shape[1] or kw.get("enable_gqa")
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    assert max_q == max(b - a for a, b in pairwise(cu_q))
    assert max_k == max(b - a for a, b in pairwise(cu_k))
    outs = []
    for i in range(len(cu_q) - 1):
        qs, ks = q[cu_q[i] : cu_q[i + 1]], k[cu_k[i] : cu_k[i + 1]]
        vs = v[cu_k[i] : cu_k[i + 1]]
        c, n = len(qs), len(ks)
        mask = torch.ones(c, n, dtype=torch.bool).tril(n - c)
        o = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1),
                                           attn_mask=mask, scale=kw.get("scale"), enable_gqa=True)  # fmt: skip
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize(("starts", "counts"), CASES)
def test_flash_varlen_glue_with_a_reference_kernel(monkeypatch, starts, counts):
    import torch.nn.attention.varlen as tv

    monkeypatch.setattr(tv, "varlen_attn", reference_varlen_attn)
    q, k, v, kc, vc, tables = batch(starts, counts)
    padded = run(build_metadata(tables, starts, counts, BS, torch.device("cpu")), q, k, v, kc, vc, 0.25)
    meta = build_varlen_metadata(tables, starts, counts, BS, torch.device("cpu"), use_kernel=True)
    torch.testing.assert_close(run(meta, q, k, v, kc, vc, 0.25), padded, rtol=1e-5, atol=1e-5)


def test_causal_probe_rejects_a_top_left_mask(monkeypatch):
    import torch.nn.attention.varlen as tv

    monkeypatch.setattr(tv, "varlen_attn", reference_varlen_attn)
    attn.check_varlen_causal("cpu", torch.float32)  # bottom-right: passes

    def top_left(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        return v[: q.shape[0]].expand_as(q)  # the first query sees only the first key

    monkeypatch.setattr(tv, "varlen_attn", top_left)
    with pytest.raises(ValueError, match="prefill_attention='padded'"):
        attn.check_varlen_causal("cpu", torch.float32)


def test_prefill_attention_is_checked():
    with pytest.raises(ValueError, match="prefill_attention"):
        EngineConfig(model="x", prefill_attention="flash")  # type: ignore[arg-type]


def both(folder, ps, **kw):
    outs = {}
    for mode in ("padded", "varlen"):
        eng = engine(folder, prefill_attention=mode, **kw)
        assert eng.runner.varlen == (mode == "varlen")
        outs[mode] = ([o.token_ids for o in eng.generate(ps, GREEDY)], eng)
    assert outs["varlen"][0] == outs["padded"][0]
    return outs["varlen"][1]


def test_varlen_prompts_of_different_lengths_match_padded(tiny_llama):
    both(tiny_llama, prompts(6, seed=20))


def test_varlen_chunked_prefill_matches_padded(tiny_llama):
    both(tiny_llama, prompts(3, seed=21, lengths=(30, 7, 22)), max_num_batched_tokens=8)


def test_varlen_prefix_cache_hits_match_padded(tiny_llama):
    system = prompts(1, seed=22, lengths=(24,))[0]
    ps = [system + tail for tail in prompts(4, seed=23, lengths=(3, 6))]
    got = {}
    for mode in ("padded", "varlen"):
        eng = engine(tiny_llama, prefill_attention=mode)
        first = eng.generate(ps[:1], GREEDY)
        rest = eng.generate(ps[1:], GREEDY)
        assert all(o.num_cached_tokens == 24 for o in rest)
        got[mode] = [o.token_ids for o in first + rest]
    assert got["varlen"] == got["padded"]


def test_varlen_preemption_matches_padded(tiny_llama):
    eng = both(tiny_llama, prompts(6, seed=5), kv_cache_gib=40 * 4 * 2 * 2 * 2 * 16 * 4 / 2**30)
    assert eng.stats().preemptions > 0


def test_varlen_prompt_logprobs_match_padded(tiny_llama):
    p = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, prompt_logprobs=0)
    ps = prompts(3, seed=24, lengths=(9, 17, 4))
    got = {}
    for mode in ("padded", "varlen"):
        outs = engine(tiny_llama, prefill_attention=mode, max_num_batched_tokens=12).generate(ps, p)
        got[mode] = [[None if d is None else sorted(d.items()) for d in o.prompt_logprobs] for o in outs]
    for a, b in zip(got["varlen"], got["padded"], strict=True):
        assert [x and [t for t, _ in x] for x in a] == [x and [t for t, _ in x] for x in b]
        for x, y in zip(a, b, strict=True):
            if x is not None:
                assert [lp for _, lp in x] == pytest.approx([lp for _, lp in y], abs=1e-4)


# ---------------------------------------------------------------- on a GPU (pytest -m gpu)

needs_varlen = pytest.mark.skipif(
    not torch.cuda.is_available() or attn.varlen_fits("cuda", torch.bfloat16, 64) is False,
    reason="needs a CUDA device and torch >= 2.10 (varlen_attn)",
)


@pytest.mark.gpu
@needs_varlen
@pytest.mark.parametrize(("starts", "counts"), [*CASES, ([0, 100, 0, 37], [128, 128, 61, 1])])
def test_gpu_flash_varlen_equals_padded_in_bf16(starts, counts):
    # Llama-3-8B heads: 32 query heads over 8 KV heads of 128
    q, k, v, kc, vc, tables = batch(starts, counts, H=32, KVH=8, D=128, device="cuda", dtype=torch.bfloat16)
    scale = 128**-0.5
    ref = run(build_metadata(tables, starts, counts, BS, torch.device("cuda")),
              *(x.float() for x in (q, k, v, kc, vc)), scale)  # fmt: skip
    meta = build_varlen_metadata(tables, starts, counts, BS, torch.device("cuda"), use_kernel=True)
    got = run(meta, q, k, v, kc, vc, scale)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_varlen
def test_gpu_varlen_engine_prompt_logprobs_close_to_padded(tiny_llama):
    """bf16 end to end: teacher-forced prompt logprobs (chunked, so chunks carry context) stay close."""
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=0)
    ps = prompts(4, seed=25, lengths=(40, 9, 23, 31))
    got = {}
    for mode in ("padded", "varlen"):
        eng = engine(tiny_llama, prefill_attention=mode, device="cuda", dtype="bfloat16", compile_ops=False,
                     max_num_batched_tokens=16)  # fmt: skip
        assert eng.runner.varlen_kernel == (mode == "varlen")
        outs = eng.generate(ps, p)
        got[mode] = [[lp for d in o.prompt_logprobs if d is not None for lp in d.values()] for o in outs]
        # greedy without prompt logprobs: mixed steps, decode rows through the graphs
        got[mode + "_tokens"] = [o.token_ids for o in eng.generate(ps, GREEDY)]
    for a, b in zip(got["varlen"], got["padded"], strict=True):
        assert a == pytest.approx(b, abs=0.1)
    pairs = zip(got["varlen_tokens"], got["padded_tokens"], strict=True)
    same = sum(x == y for a, b in pairs for x, y in zip(a, b, strict=True))
    assert same >= 0.75 * sum(len(a) for a in got["padded_tokens"])  # bf16 noise may flip a near-tie
