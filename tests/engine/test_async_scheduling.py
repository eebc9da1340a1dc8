"""Async scheduling (step N+1 launched before step N's tokens are read) against the synchronous path.

The async path runs on the CPU too (no overlap there, same bookkeeping): every scripted workload
below is run both ways on a tiny random Llama and must give the same streams, token for token, the
same finish reasons, and leave every KV block free at the end. Two GPU tests (`-m gpu`) check the
CUDA-graph path the same way, and that a decode step is launched without any host synchronization.
"""

from __future__ import annotations

import random

import pytest
import torch

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.sampler import Sampler
from tuneloop.engine.sequence import Sequence

from .test_engine import GREEDY, hf_greedy, prompts


def engine(folder, async_scheduling: bool, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("kv_cache_gib", 0.01)
    return LLMEngine.from_pretrained(folder, async_scheduling=async_scheduling, **kw)


def drive(eng: LLMEngine, script: dict[int, list[tuple]], max_steps: int = 500) -> dict[str, dict]:
    """Step the engine; at step k run script[k]: ("add", name, prompt, params[, kwargs]) or ("abort", name).

    Returns, per request name, the stream of new tokens, the sequence's own output ids when it
    last gave an output, the finish reason and how many outputs it got (exactly one of them finished).
    """
    seqs: dict[str, Sequence] = {}
    got: dict[str, dict] = {}
    for step in range(max_steps):
        for action in script.get(step, []):
            if action[0] == "add":
                _, name, prompt, params, *extra = action
                seqs[name] = eng.add_request(prompt, params, **(extra[0] if extra else {}))
                got[name] = {"stream": [], "final": None, "reason": None, "finished": 0}
            else:
                eng.abort(seqs[action[1]].request_id)
        names = {seq.request_id: name for name, seq in seqs.items()}
        for out in eng.step():
            name = names[out.request_id]
            g = got[name]
            assert not g["finished"], "an output after the finished one"
            g["stream"].extend(out.new_token_ids)
            g["final"], g["reason"] = list(seqs[name].output_ids), out.finish_reason
            g["finished"] += out.finished
        if step > max(script) and not eng.has_unfinished():
            break
    else:
        raise AssertionError("the engine did not finish")
    return got


def both(folder, script, **kw) -> tuple[dict, LLMEngine]:
    sync_eng, async_eng = engine(folder, False, **kw), engine(folder, True, **kw)
    expected, got = drive(sync_eng, script), drive(async_eng, script)
    aborted = {a[1] for actions in script.values() for a in actions if a[0] == "abort"}
    for name in aborted:  # async outputs come one step later: it had streamed a prefix when aborted
        e, g = expected.pop(name), got.pop(name)
        assert g == e if g["finished"] else e["stream"][: len(g["stream"])] == g["stream"]
    assert got == expected
    for eng in (sync_eng, async_eng):
        assert eng.blocks.num_free == len(eng.blocks.blocks), "a KV block leaked"
        assert all(b.ref_count == 0 for b in eng.blocks.blocks)
        assert not eng.sequences and (eng.overlap is None or not eng.overlap.host_bound)
    return got, async_eng


def test_async_is_off_on_cpu_by_default_and_switchable(tiny_llama):
    assert LLMEngine.from_pretrained(tiny_llama, kv_cache_gib=0.01).async_scheduling is False
    assert engine(tiny_llama, True).async_scheduling is True


def test_greedy_with_staggered_arrivals_matches_sync_and_generate(tiny_llama):
    ps = prompts(5, seed=1)
    script = {3 * i: [("add", f"r{i}", p, GREEDY)] for i, p in enumerate(ps)}
    got, _ = both(tiny_llama, script)
    assert [got[f"r{i}"]["final"] for i in range(5)] == [hf_greedy(tiny_llama, p, 12) for p in ps]
    assert all(g["stream"] == g["final"] and g["finished"] == 1 for g in got.values())


def test_the_next_step_reads_its_input_ids_on_the_device(tiny_llama):
    eng = engine(tiny_llama, True)
    real, seen = eng.runner.run, []

    def spy(inputs):
        seen.append(inputs.device_ids)
        return real(inputs)

    eng.runner.run = spy
    outs = eng.generate(prompts(3, seed=2), GREEDY)
    assert all(len(o.token_ids) == 12 for o in outs)
    assert max(seen) == 3  # decode steps took every newest token from the previous step's tensor


def test_stop_tokens_eos_and_max_tokens_drop_the_extra_token(tiny_llama):
    p = prompts(4, seed=9)
    free = engine(tiny_llama, False).generate(p, GREEDY)
    stop = SamplingParams(
        max_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=[free[0].token_ids[3]]
    )
    script = {
        0: [("add", "stop", p[0], stop), ("add", "one", p[1], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))],
        1: [("add", "two", p[2], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))],
        2: [("add", "eos", p[3], SamplingParams(max_tokens=12, temperature=0))],
    }  # fmt: skip
    for eng_eos in (None, {free[3].token_ids[2]}):  # the model's own eos, then a token it does emit
        sync_eng, async_eng = engine(tiny_llama, False), engine(tiny_llama, True)
        if eng_eos:
            sync_eng.eos_ids = async_eng.eos_ids = eng_eos
        expected, got = drive(sync_eng, script), drive(async_eng, script)
        assert got == expected
        assert async_eng.blocks.num_free == len(async_eng.blocks.blocks)
    assert got["stop"]["reason"] == "stop" and got["stop"]["final"][-1] == stop.stop_token_ids[0]
    assert len(got["one"]["final"]) == 1 and len(got["two"]["final"]) == 2
    eos = free[3].token_ids[2]
    assert (
        got["eos"]["reason"] == "stop"
        and got["eos"]["final"] == free[3].token_ids[: free[3].token_ids.index(eos) + 1]
    )


def test_abort_mid_stream_frees_blocks_and_leaves_the_others_alone(tiny_llama):
    ps = prompts(4, seed=14)
    long = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    script = {
        0: [("add", f"r{i}", p, long) for i, p in enumerate(ps)],
        4: [("abort", "r1")],
        5: [("abort", "r2")],  # the step after: one launched with r2 is still in flight
        9: [("abort", "r0"), ("add", "late", ps[1], GREEDY)],
    }
    got, eng = both(tiny_llama, script)
    assert got["r3"]["final"] == hf_greedy(tiny_llama, ps[3], 30)
    assert got["late"]["final"] == hf_greedy(tiny_llama, ps[1], 12)
    assert eng.abort("nope") is False


def test_prefix_cache_hits_are_the_same(tiny_llama):
    system = prompts(1, seed=2, lengths=(24,))[0]
    ps = [system + tail for tail in prompts(4, seed=3, lengths=(3, 6))]
    turn1 = prompts(1, seed=4, lengths=(10,))[0]
    script = {0: [("add", "a", ps[0], GREEDY), ("add", "t1", turn1, GREEDY)], 20: [("add", "b", ps[1], GREEDY)],
              21: [("add", "c", ps[2], GREEDY), ("add", "d", ps[3], GREEDY)]}  # fmt: skip
    sync_eng, async_eng = engine(tiny_llama, False), engine(tiny_llama, True)
    expected, got = drive(sync_eng, script), drive(async_eng, script)
    assert got == expected
    # a second turn reuses the first turn's prompt and answer in whole blocks, on both paths
    turn2 = turn1 + got["t1"]["final"] + [7, 8, 9]
    a, b = sync_eng.generate([turn2], GREEDY)[0], async_eng.generate([turn2], GREEDY)[0]
    assert a.token_ids == b.token_ids == hf_greedy(tiny_llama, turn2, 12)
    assert a.num_cached_tokens == b.num_cached_tokens >= 16
    assert async_eng.stats().prefix_cache_hit_rate == sync_eng.stats().prefix_cache_hit_rate > 0.3


def test_preemption_and_chunked_prefill(tiny_llama):
    ps = prompts(6, seed=5)
    p24 = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    small = 40 * 4 * 2 * 2 * 2 * 16 * 4 / 2**30  # 40 blocks of 4 tokens
    got, eng = both(tiny_llama, {0: [("add", f"r{i}", p, p24) for i, p in enumerate(ps)]}, kv_cache_gib=small)
    assert eng.stats().preemptions > 0
    assert [got[f"r{i}"]["final"] for i in range(6)] == [hf_greedy(tiny_llama, p, 24) for p in ps]
    ps = prompts(3, seed=6, lengths=(30, 7, 22))
    both(tiny_llama, {0: [("add", f"r{i}", p, GREEDY) for i, p in enumerate(ps)]}, max_num_batched_tokens=8)


def test_max_model_len_ends_with_length(tiny_llama):
    p = prompts(2, seed=15, lengths=(10, 3))
    long = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    got, _ = both(tiny_llama, {0: [("add", "a", p[0], long), ("add", "b", p[1], long)]}, max_model_len=16)
    assert len(got["a"]["final"]) == 6 and got["a"]["reason"] == "length"
    assert len(got["b"]["final"]) == 13 and got["b"]["reason"] == "length"


def test_seeded_sampling_is_token_identical(tiny_llama):
    ps = prompts(4, seed=7)
    kinds = [
        SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True),
        SamplingParams(max_tokens=16, temperature=0.7, min_p=0.05, seed=7, ignore_eos=True),
        SamplingParams(max_tokens=16, temperature=1.3, seed=99),
        GREEDY,
    ]
    script = {0: [("add", f"r{i}", p, k) for i, (p, k) in enumerate(zip(ps, kinds, strict=True))]}
    got, _ = both(tiny_llama, script)
    assert len(set(map(tuple, (g["final"] for g in got.values())))) == 4


def test_draw_is_torch_multinomial():
    sampler, seq = Sampler("cpu"), Sequence([1], SamplingParams(seed=5))
    gen = torch.Generator().manual_seed(5)
    for i in range(50):
        probs = torch.softmax(torch.randn(300, generator=torch.Generator().manual_seed(i)) * 2, -1)
        probs[probs < probs.median()] = 0  # as top-p / min-p leave them
        assert int(sampler._draw(probs, seq)) == int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def test_host_bound_requests_fall_back_to_sync_steps_then_async_resumes(tiny_llama):
    ps = prompts(4, seed=10)
    script = {
        0: [("add", "g", ps[0], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))],
        3: [("add", "lp", ps[1], SamplingParams(max_tokens=3, temperature=0, logprobs=2, prompt_logprobs=1, ignore_eos=True))],
        4: [("add", "pen", ps[2], SamplingParams(max_tokens=4, temperature=0, repetition_penalty=1.3, frequency_penalty=0.5, ignore_eos=True))],
        12: [("add", "g2", ps[3], GREEDY)],
    }  # fmt: skip
    sync_eng, async_eng = engine(tiny_llama, False), engine(tiny_llama, True)
    launched = []
    real = async_eng._launch
    async_eng._launch = lambda batch: launched.append(len(batch)) or real(batch)
    expected, got = drive(sync_eng, script), drive(async_eng, script)
    assert got == expected
    assert launched  # async steps ran before and after the host-bound requests


def test_steps_with_prefill_run_synchronously_and_pure_decode_steps_overlap(tiny_llama):
    ps = prompts(4, seed=16, lengths=(9, 30))
    long = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    script = {0: [("add", "a", ps[0], long)], 4: [("add", "b", ps[1], long)],
              5: [("add", "c", ps[2], long), ("add", "d", ps[3], long)]}  # fmt: skip
    sync_eng, eng = (engine(tiny_llama, on, max_num_batched_tokens=8) for on in (False, True))
    steps: list[tuple[bool, bool]] = []  # (launched ahead, has a prompt chunk) of every model run
    ahead = [False]
    real_run, real_launch = eng.runner.run, eng._launch

    def run(inputs):
        steps.append((ahead[0], any(i.seq.num_computed < len(i.seq.prompt_ids) for i in inputs.batch)))
        return real_run(inputs)

    def launch(batch):
        ahead[0] = True
        try:
            return real_launch(batch)
        finally:
            ahead[0] = False

    eng.runner.run, eng._launch = run, launch
    assert drive(eng, script) == drive(sync_eng, script)
    assert not any(launched and prefill for launched, prefill in steps)  # prompt chunks: synchronous
    assert sum(launched for launched, _ in steps) == eng.stats().async_steps
    assert eng.stats().async_steps == sum(not prefill for _, prefill in steps) > 10  # decodes: all ahead
    # a new request's first token comes back from the step() that ran its last prompt chunk: no lag
    late = eng.add_request(ps[0][::-1][:9], long)  # (reversed: no prefix cache hit)
    outs = [eng.step() for _ in range(2)]  # prompt chunks of 8 and 1 tokens
    assert (
        outs[0] == [] and [o.request_id for o in outs[1]] == [late.request_id] and late.num_cached_prompt == 0
    )
    assert steps[-2:] == [(False, True), (False, True)]


def test_logprobs_are_unchanged(tiny_llama):
    p = prompts(1, seed=10)[0]
    params = SamplingParams(max_tokens=3, temperature=0, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    a = engine(tiny_llama, False).generate([p], params)[0]
    b = engine(tiny_llama, True).generate([p], params)[0]
    assert (a.token_ids, a.logprobs, a.prompt_logprobs) == (b.token_ids, b.logprobs, b.prompt_logprobs)


@pytest.mark.parametrize("mode", ["looped", "stacked"])
def test_mixed_lora_adapters(tiny_llama, tmp_path, mode):
    from .test_lora import make_adapter

    make_adapter(tiny_llama, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"])
    make_adapter(tiny_llama, tmp_path / "b", 2, ["q_proj", "k_proj", "gate_proj", "up_proj"], rank=8)
    ps = prompts(4, seed=30)
    results = []
    for on in (False, True):
        eng = engine(tiny_llama, on)
        eng.load_lora("a", tmp_path / "a")
        eng.load_lora("b", tmp_path / "b")
        eng.lora.mode = mode
        script = {0: [("add", "r0", ps[0], GREEDY, {"lora": "a"}), ("add", "r1", ps[1], GREEDY)],
                  2: [("add", "r2", ps[2], GREEDY, {"lora": "b"}), ("add", "r3", ps[3], GREEDY, {"lora": "a"})]}  # fmt: skip
        results.append(drive(eng, script))
    assert results[0] == results[1]
    assert results[1]["r0"]["final"] != hf_greedy(tiny_llama, ps[0], 12)  # the adapter was applied


def test_async_engine_streams_with_async_scheduling(tiny_llama):
    import asyncio

    from tuneloop.engine.async_engine import AsyncEngine

    ps = prompts(4, seed=20)
    expected = [o.token_ids for o in engine(tiny_llama, False).generate(ps, GREEDY)]
    aeng = AsyncEngine(engine(tiny_llama, True))

    async def one(p):
        pieces = []
        async for out in await aeng.submit(p, GREEDY):
            pieces.extend(out.new_token_ids)
        return pieces

    async def main():
        return await asyncio.gather(*(one(p) for p in ps))

    try:
        assert asyncio.run(main()) == expected
        assert aeng.stats().generated_tokens == 4 * 12
    finally:
        aeng.shutdown()
    assert not aeng.engine.has_unfinished()


def test_abort_of_the_only_request_leaves_nothing_to_step(tiny_llama):
    eng = engine(tiny_llama, True)
    seq = eng.add_request(prompts(1, lengths=(30,))[0], GREEDY)
    assert len(eng.step()) == 1  # the prefill runs synchronously
    assert eng.step() == []  # the first decode is in flight: its token is not read yet
    assert eng.has_unfinished() and seq.num_output_placeholders == 1
    used = eng.blocks.num_free
    assert eng.abort(seq.request_id) is True
    assert eng.blocks.num_free > used and not eng.has_unfinished()
    assert eng.step() == [] and eng.abort(seq.request_id) is False


def random_script(seed: int) -> tuple[dict[int, list[tuple]], dict]:
    """Arrivals over the first steps, a shared prefix, stops, sampling, host-bound requests, aborts."""
    r = random.Random(seed)
    system = [r.randrange(5, 500) for _ in range(r.choice([0, 8, 13]))]
    script: dict[int, list[tuple]] = {}
    for i in range(r.randint(3, 9)):
        prompt = system + [r.randrange(5, 500) for _ in range(r.randint(1, 20))]
        stops = r.sample(range(5, 500), 40) if r.random() < 0.5 else []
        params = r.choice([
            SamplingParams(max_tokens=r.randint(1, 25), temperature=0, ignore_eos=r.random() < 0.5, stop_token_ids=stops),
            SamplingParams(max_tokens=r.randint(1, 25), temperature=1.0, top_p=0.8, seed=i, stop_token_ids=stops),
            SamplingParams(max_tokens=r.randint(1, 10), temperature=0, logprobs=1, repetition_penalty=1.2, ignore_eos=True),
        ])  # fmt: skip
        step = r.randint(0, 12)
        script.setdefault(step, []).append(("add", f"r{i}", prompt, params))
        if r.random() < 0.2:
            script.setdefault(step + r.randint(1, 8), []).append(("abort", f"r{i}"))
    small = 30 * 4 * 2 * 2 * 2 * 16 * 4 / 2**30  # 30 blocks of 4 tokens: preemptions
    kw = {"kv_cache_gib": r.choice([0.01, small]), "max_num_batched_tokens": r.choice([8, 16, 2048]),
          "max_num_seqs": r.choice([2, 4, 64])}  # fmt: skip
    return script, kw


@pytest.mark.parametrize("seed", range(12))
def test_random_workloads_match_sync(tiny_llama, seed):
    script, kw = random_script(seed)
    both(tiny_llama, script, **kw)


# ---------------------------------------------------------------- on a GPU (pytest -m gpu)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MIXED = [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)] * 4 + [
    SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=3, ignore_eos=True),
    SamplingParams(max_tokens=13, temperature=1.0, top_k=20, min_p=0.02, seed=4, ignore_eos=True),
]


def gpu_engine(folder, on: bool) -> LLMEngine:
    # fp32: both paths then run the same kernels on the same batches, bit for bit
    eng = engine(folder, on, device="cuda", dtype="float32", compile_ops=False, max_num_seqs=8)
    if eng.runner.graphs is None:
        pytest.skip("needs triton (the decode kernel and its CUDA graphs)")
    return eng


@pytest.mark.gpu
@needs_cuda
def test_gpu_async_equals_sync_with_graphs(tiny_llama):
    ps = prompts(6, seed=40)
    script = {0: [("add", f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(ps[:4], MIXED[:4], strict=True))],
              3: [("add", f"s{i}", p, sp) for i, (p, sp) in enumerate(zip(ps[4:], MIXED[4:], strict=True))]}  # fmt: skip
    sync_eng, async_eng = gpu_engine(tiny_llama, False), gpu_engine(tiny_llama, True)
    expected, got = drive(sync_eng, script), drive(async_eng, script)
    assert got == expected
    assert async_eng.blocks.num_free == len(async_eng.blocks.blocks)


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_steps_launch_without_a_host_sync(tiny_llama):
    eng = gpu_engine(tiny_llama, True)
    for p, sp in zip(prompts(6, seed=41), MIXED, strict=True):
        eng.add_request(p, sp)
    eng.step()  # the prefill (the padded attention path reads a mask back: not checked here)
    eng.step()  # the first decode step; the prefill's tokens are read
    real, launched = eng._launch, []

    def strict(batch):
        launched.append(len(batch))
        torch.cuda.set_sync_debug_mode("error")  # a copy or read that waits for the GPU raises
        try:
            return real(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    eng._launch = strict
    for _ in range(10):
        eng.step()
    assert launched == [6] * 10  # decode-only steps, every one through the strict launch


def test_decode_batches_above_async_max_batch_run_synchronously(tiny_llama):
    ps = prompts(4, seed=21, lengths=(9, 20))
    lengths = (4, 6, 16, 20)  # two finish early: the last steps have 2 rows
    script = {0: [("add", str(i), p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
                  for i, (p, n) in enumerate(zip(ps, lengths, strict=True))]}  # fmt: skip
    small = engine(tiny_llama, True, async_max_batch=2)
    sizes: list[int] = []
    real_launch = small._launch

    def launch(batch):
        sizes.append(len(small.scheduler.running))
        return real_launch(batch)

    small._launch = launch
    assert drive(small, script) == drive(engine(tiny_llama, False), script)  # same tokens either way
    assert sizes and max(sizes) <= 2  # 4 running: synchronous; overlapped once 2 or fewer remain
    assert small.stats().async_steps == len(sizes)


@pytest.mark.gpu
@needs_cuda
def test_gpu_split_kv_decode_gives_the_same_tokens_as_one_program_per_sequence(tiny_llama):
    """Split-KV is on by default: long contexts in a small batch are read by several programs whose
    partials are combined; greedy tokens must be those of the unsplit kernel (fp32, eager and graphs)."""
    ps = prompts(3, seed=42, lengths=(300, 420))
    script = {0: [("add", f"r{i}", p, MIXED[0]) for i, p in enumerate(ps)]}

    def fp32(**kw) -> LLMEngine:
        return engine(
            tiny_llama, False, device="cuda", dtype="float32", compile_ops=False, kv_cache_gib=0.05, **kw
        )

    split = fp32()
    if split.runner.graphs is None:
        pytest.skip("needs triton (the decode kernel and its CUDA graphs)")
    assert split.runner.decode_splits(3) > 1  # 3 sequences x 2 KV heads leave the SMs idle
    whole, eager = fp32(split_kv_decode=False), fp32(enforce_eager=True)
    assert whole.runner.decode_splits(3) == 1
    expected = drive(whole, script)
    assert drive(split, script) == expected and drive(eager, script) == expected
