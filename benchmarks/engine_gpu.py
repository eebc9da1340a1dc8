"""Engine speed on one GPU against transformers, same run, same card.

Llama-3-8B-shaped random bf16 weights. Baselines from ../shared/bench/hf_baseline_gpu.py (carried
in .devcarry): `generate` at batch 1, and `generate_batch` for 256 requests of 128 + 128 tokens.
tuneloop: batch-1 decode, the same 256 requests offline, and TTFT / inter-token latency with 32
concurrent clients. Batch 1 is measured three ways on the same engine, to show what moved it:
CUDA graphs + Triton paged attention (the default), eager + Triton, eager + gathered SDPA.
A profile of a few decode steps says where the time goes.

The engine runs with async scheduling (the CUDA default; forced on in --tiny's CPU run too, so the
path is exercised); --sync measures batch 1, the 256 requests and the 32 clients again on the same
engine with it off (keys ending in _sync), for a same-run comparison.

--int8 then frees that engine and builds a second one with weight-only int8 decoder linears
(EngineConfig.quantization="int8"), and measures batch 1 and the 256 requests on it (keys *_int8);
--fp8 does the same with W8A8 FP8 linears (quantization="fp8", keys *_fp8; on a device without FP8
tensor cores the build's error is recorded as fp8_error and the run ends cleanly). ratio_*_fp8 are
against the bf16 engine of the same run. --quant-only skips transformers and the other bf16
measurements: bf16 batch 1 and the 256 requests, then the quantized engines
(engine_gpu_quant.json).

--prefill varlen builds every engine with EngineConfig.prefill_attention="varlen" (prompt chunks
through FlashAttention varlen instead of the padded SDPA path; default: padded). With
--offline-only the results go to engine_gpu_offline_<prefill>.json, with a step breakdown (model
time of the mixed steps, where the prefill attention runs), so both paths can share one $OUT.

    PYTHONPATH=src:.devcarry python3 benchmarks/engine_gpu.py $OUT [--tiny] [--sync] [--int8] [--fp8]
        [--quant-only] [--offline-only] [--prefill padded|varlen]
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.engine import EngineConfig, LLMEngine, SamplingParams
from tuneloop.engine.models.llama import random_llama

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                 rope_theta=500000.0, tie_word_embeddings=False, eos_token_id=-1)  # fmt: skip
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=1024, tie_word_embeddings=False, eos_token_id=-1)  # fmt: skip
PROMPT, NEW = 128, 128


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prefill_arg() -> str:
    if "--prefill" not in sys.argv:
        return "padded"
    i = sys.argv.index("--prefill")
    if i + 1 >= len(sys.argv) or sys.argv[i + 1] not in ("padded", "varlen"):
        raise SystemExit("--prefill takes padded or varlen")
    return sys.argv[i + 1]


def build_engine(shape: dict, device: str, folder: Path | None = None, **kw) -> LLMEngine:
    kw.setdefault("prefill_attention", prefill_arg())
    folder = folder or Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = random_llama(shape, dtype, device)
    cfg = EngineConfig(
        model=str(folder), device=device, dtype="bfloat16" if device == "cuda" else "float32", **kw
    )
    return LLMEngine(cfg, model=model)


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 1, (n, PROMPT), generator=g).tolist()


def batch1(engine: LLMEngine, vocab: int, seed: int = 2) -> dict:
    """One request: end to end (prefill included), and the decode rate after the first token.

    Every measurement uses its own prompts (`seed`): a prompt seen before would come from the prefix
    cache and flatter the prefill."""
    p = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    engine.generate(
        prompts(1, vocab, 100 + seed), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    )  # warm-up
    sync()
    t = time.perf_counter()
    engine.add_request(prompts(1, vocab, seed)[0], p)
    first = None
    while engine.has_unfinished():
        outs = engine.step()
        if first is None and outs:  # async scheduling returns a step's tokens one call later
            first = time.perf_counter()
    sync()
    end = time.perf_counter()
    return {"batch": 1, "seconds": round(end - t, 3), "output_tokens_per_s": round(NEW / (end - t), 1),
            "ttft_ms": round(1000 * (first - t), 1),
            "decode_tokens_per_s": round((NEW - 1) / (end - first), 1)}  # fmt: skip


def offline(engine: LLMEngine, vocab: int, n: int = 256, seed: int = 3) -> dict:
    p = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    # warm-up with the same shapes (first-use costs), on prompts of their own (no prefix-cache hits)
    engine.generate(
        prompts(n, vocab, 100 + seed), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    )
    sync()
    t = time.perf_counter()
    outs = engine.generate(prompts(n, vocab, seed), p)
    sync()
    dt = time.perf_counter() - t
    tokens = sum(len(o.token_ids) for o in outs)
    return {"requests": n, "seconds": round(dt, 3), "output_tokens_per_s": round(tokens / dt, 1)}


def breakdown(engine: LLMEngine, vocab: int, n: int = 256) -> dict:
    """The 256-request run again, step by step: model time (synchronized) vs host time, mixed vs decode steps."""
    p = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    for pr in prompts(n, vocab, 6):
        engine.add_request(pr, p)
    runner, real = engine.runner, engine.runner.run
    acc = {"mixed": [0, 0.0, 0.0], "decode": [0, 0.0, 0.0]}  # steps, model s, total s
    state = {}

    def timed(inputs):  # the runner's run phase (the model); prepare and sample count as host time
        sync()
        t = time.perf_counter()
        out = real(inputs)
        sync()
        state["model"] = time.perf_counter() - t
        state["kind"] = "decode" if all(i.num_tokens == 1 and i.samples for i in inputs.batch) else "mixed"
        return out

    runner.run = timed
    try:
        while engine.has_unfinished():
            state.clear()
            t = time.perf_counter()
            engine.step()
            sync()
            # async scheduling's last call only reads the last step's tokens: host time, no step
            a = acc[state.get("kind", "decode")]
            a[0] += "kind" in state
            a[1] += state.get("model", 0.0)
            a[2] += time.perf_counter() - t
    finally:
        runner.run = real
    return {k: {"steps": v[0], "model_s": round(v[1], 3), "host_s": round(v[2] - v[1], 3),
                "ms_per_step": round(1000 * v[2] / max(v[0], 1), 2)} for k, v in acc.items()}  # fmt: skip


def concurrent(engine: LLMEngine, vocab: int, clients: int = 32, total: int = 64, seed: int = 4) -> dict:
    """Closed loop; TTFT from arrival to first token, ITL between a request's tokens (step granularity)."""
    p = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    pending = prompts(total, vocab, seed)
    arrival, last, ttft, itl = {}, {}, [], []
    in_flight = 0
    t0 = time.perf_counter()
    while pending or engine.has_unfinished():
        while pending and in_flight < clients:
            rid = engine.add_request(pending.pop(), p).request_id
            arrival[rid] = time.perf_counter()
            in_flight += 1
        # no sync(): the outputs' tokens were read on the host already (a sync would wait for the next step too)
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            if o.request_id not in last:
                ttft.append(now - arrival[o.request_id])
            else:
                itl.append(now - last[o.request_id])
            last[o.request_id] = now
            in_flight -= o.finished
    q = statistics.quantiles
    return {"clients": clients, "requests": total, "seconds": round(time.perf_counter() - t0, 2),
            "ttft_ms_p50": round(1000 * statistics.median(ttft), 1), "ttft_ms_p90": round(1000 * q(ttft, n=10)[-1], 1),
            "itl_ms_p50": round(1000 * statistics.median(itl), 2), "itl_ms_p90": round(1000 * q(itl, n=10)[-1], 2)}  # fmt: skip


def set_async(engine: LLMEngine, on: bool) -> None:
    while engine.has_unfinished():  # a step in flight is read with the mode that launched it
        engine.step()
    engine.async_scheduling = on


def profile_decode(engine: LLMEngine, vocab: int, out: Path) -> str:
    for pr in prompts(32, vocab, 5):
        engine.add_request(pr, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    for _ in range(5):
        engine.step()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(5):
            engine.step()
        sync()
    while engine.has_unfinished():
        engine.step()
    table = prof.key_averages().table(
        sort_by="cuda_time_total" if torch.cuda.is_available() else "cpu_time_total", row_limit=20
    )
    (out / "engine_profile.txt").write_text(table)
    return table


def kernel_check(device: str) -> float | None:
    """Max |error| of the Triton decode kernel against SDPA over the same scattered blocks (bf16)."""
    if device != "cuda":
        return None
    import torch.nn.functional as F

    from tuneloop.engine.kernels.paged_decode import paged_decode_attention

    torch.manual_seed(0)
    H, KVH, D, bs, lens = 32, 8, 128, 16, [1, 17, 300, 1000]
    kc = torch.randn(128 * bs, KVH, D, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    perm = torch.randperm(128).tolist()
    tables = torch.zeros(len(lens), 64, dtype=torch.int32)
    i = 0
    for b, n in enumerate(lens):
        nb = -(-n // bs)
        tables[b, :nb] = torch.tensor(perm[i : i + nb])
        i += nb
    q = torch.randn(len(lens), H, D, device=device, dtype=torch.bfloat16)
    got = paged_decode_attention(
        q, kc, vc, tables.to(device), torch.tensor(lens, dtype=torch.int32, device=device), bs, D**-0.5
    )
    err = 0.0
    for b, n in enumerate(lens):
        slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for p in range(n)], device=device)
        k = kc[slots].float().transpose(0, 1).repeat_interleave(H // KVH, 0)
        v = vc[slots].float().transpose(0, 1).repeat_interleave(H // KVH, 0)
        ref = F.scaled_dot_product_attention(q[b].float()[:, None], k, v, scale=D**-0.5)[:, 0]
        err = max(err, (got[b].float() - ref).abs().max().item())
    return err


def offline_only(shape: dict, device: str, tiny: bool, out: Path, res: dict) -> None:
    engine = build_engine(shape, device, max_num_seqs=256, max_num_batched_tokens=4096, async_scheduling=True,
                          **({"kv_cache_gib": 0.05} if tiny else {}))  # fmt: skip
    n = 16 if tiny else 256
    prefill = engine.config.prefill_attention
    res["prefill_attention"] = prefill
    res["varlen_kernel"] = engine.runner.varlen_kernel
    path = out / f"engine_gpu_offline_{prefill}.json"
    for name, on, seed in (
        ("async", True, 3),
        ("sync", False, 13),
        ("async_again", True, 23),
        ("sync_again", False, 33),
    ):
        set_async(engine, on)
        res[f"tuneloop_256_{name}"] = offline(engine, shape["vocab_size"], n, seed=seed)
        print("tuneloop 256", name, res[f"tuneloop_256_{name}"], flush=True)
        path.write_text(json.dumps(res, indent=1))
    set_async(engine, True)
    res["tuneloop_256_breakdown"] = breakdown(engine, shape["vocab_size"], n)
    print("tuneloop 256 breakdown", res["tuneloop_256_breakdown"], flush=True)
    path.write_text(json.dumps(res, indent=1))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    tiny = "--tiny" in sys.argv
    also_sync = "--sync" in sys.argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = TINY if tiny else LLAMA3_8B
    res: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    res["kernel_check_max_abs_err"] = kernel_check(device)
    print("kernel check", res["kernel_check_max_abs_err"], flush=True)
    if "--quant-only" in sys.argv:  # bf16 against the quantized engines, nothing else
        return quant_only(shape, device, tiny, out, res)
    if device == "cuda" and not tiny:
        import hf_baseline_gpu as hf

        model = hf.build_model()
        if "--offline-only" not in sys.argv:
            res["hf_generate_b1"] = hf.hf_generate(model, 1)
            print("hf b1", res["hf_generate_b1"], flush=True)
        res["hf_generate_batch_256"] = hf.hf_continuous_batching(model)
        print("hf generate_batch", res["hf_generate_batch_256"], flush=True)
        del model
        torch.cuda.empty_cache()
    if "--offline-only" in sys.argv:  # the 256-request run only: async vs sync decode, fresh prompts each
        return offline_only(shape, device, tiny, out, res)
    engine = build_engine(
        shape,
        device,
        max_num_seqs=256,
        max_num_batched_tokens=4096,
        async_scheduling=True,
        **({"kv_cache_gib": 0.05} if tiny else {}),
    )
    res["kv_blocks"] = engine.runner.num_blocks
    res["prefill_attention"] = engine.config.prefill_attention
    res["async_scheduling"] = engine.async_scheduling
    res["tuneloop_b1"] = batch1(engine, shape["vocab_size"])
    print("tuneloop b1", res["tuneloop_b1"], flush=True)
    graphs, runner = engine.runner.graphs, engine.runner
    runner.graphs = None
    res["tuneloop_b1_eager_triton"] = batch1(engine, shape["vocab_size"])
    print("tuneloop b1 eager+triton", res["tuneloop_b1_eager_triton"], flush=True)
    kernel, runner.decode_kernel = runner.decode_kernel, False
    res["tuneloop_b1_eager_sdpa"] = batch1(engine, shape["vocab_size"])
    print("tuneloop b1 eager+sdpa", res["tuneloop_b1_eager_sdpa"], flush=True)
    runner.graphs, runner.decode_kernel = graphs, kernel
    res["graph_batch_sizes"] = graphs.sizes if graphs is not None else None
    res["tuneloop_256"] = offline(engine, shape["vocab_size"], 16 if tiny else 256)
    print("tuneloop 256", res["tuneloop_256"], flush=True)
    res["tuneloop_256_breakdown"] = breakdown(engine, shape["vocab_size"], 16 if tiny else 256)
    print("tuneloop 256 breakdown", res["tuneloop_256_breakdown"], flush=True)
    res["tuneloop_32_concurrent"] = concurrent(engine, shape["vocab_size"], 32, 40 if tiny else 64)
    print("tuneloop 32 concurrent", res["tuneloop_32_concurrent"], flush=True)
    if also_sync:  # the same engine, async scheduling off: the host work is not overlapped
        set_async(engine, False)
        res["tuneloop_b1_sync"] = batch1(engine, shape["vocab_size"], seed=12)
        print("tuneloop b1 sync", res["tuneloop_b1_sync"], flush=True)
        res["tuneloop_256_sync"] = offline(engine, shape["vocab_size"], 16 if tiny else 256, seed=13)
        print("tuneloop 256 sync", res["tuneloop_256_sync"], flush=True)
        res["tuneloop_32_concurrent_sync"] = concurrent(
            engine, shape["vocab_size"], 32, 40 if tiny else 64, seed=14
        )
        print("tuneloop 32 concurrent sync", res["tuneloop_32_concurrent_sync"], flush=True)
        set_async(engine, True)
    if "hf_generate_batch_256" in res:
        res["ratio_256_vs_generate_batch"] = round(
            res["tuneloop_256"]["output_tokens_per_s"] / res["hf_generate_batch_256"]["output_tokens_per_s"],
            2,
        )
        res["ratio_b1_vs_generate"] = round(
            res["tuneloop_b1"]["output_tokens_per_s"] / res["hf_generate_b1"]["output_tokens_per_s"], 2
        )
    if device == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    (out / "engine_gpu.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1), flush=True)
    print(profile_decode(engine, shape["vocab_size"], out))
    del engine, graphs, runner  # the bf16 8B engine fills most of the card: free it first
    all_quant_runs(shape, device, tiny, res, out / "engine_gpu.json")


def quant_only(shape: dict, device: str, tiny: bool, out: Path, res: dict) -> None:
    engine = build_engine(shape, device, max_num_seqs=256, max_num_batched_tokens=4096, async_scheduling=True,
                          **({"kv_cache_gib": 0.05} if tiny else {}))  # fmt: skip
    res["kv_blocks"] = engine.runner.num_blocks
    res["tuneloop_b1"] = batch1(engine, shape["vocab_size"])
    print("tuneloop b1", res["tuneloop_b1"], flush=True)
    res["tuneloop_256"] = offline(engine, shape["vocab_size"], 16 if tiny else 256)
    print("tuneloop 256", res["tuneloop_256"], flush=True)
    if device == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del engine
    all_quant_runs(shape, device, tiny, res, out / "engine_gpu_quant.json")


def all_quant_runs(shape: dict, device: str, tiny: bool, res: dict, path: Path) -> None:
    """The quantized engines that the flags ask for, one at a time, each against the bf16 run in res."""
    methods = [m for m in ("fp8", "int8") if f"--{m}" in sys.argv]
    if not methods:
        return
    for method in methods:
        gc.collect()  # the previous engine (and its KV cache) must be gone before the next sizes its cache
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        res.update(quant_runs(shape, device, tiny, method))
        for key, run in (("b1", "tuneloop_b1"), ("256", "tuneloop_256")):
            if f"{run}_{method}" in res and run in res:
                res[f"ratio_{key}_{method}"] = round(
                    res[f"{run}_{method}"]["output_tokens_per_s"] / res[run]["output_tokens_per_s"], 2
                )
        path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1), flush=True)


def quant_runs(shape: dict, device: str, tiny: bool, method: str) -> dict:
    """A second engine with quantized decoder linears: batch-1 decode (weight-bound: ~half the bytes)
    and the 256 run. A device the method cannot run on (fp8 without FP8 tensor cores) is recorded."""
    t = time.perf_counter()
    try:
        engine = build_engine(shape, device, max_num_seqs=256, max_num_batched_tokens=4096, quantization=method,
                              **({"kv_cache_gib": 0.05} if tiny else {}))  # fmt: skip
    except ValueError as e:
        print(f"{method} skipped: {e}", flush=True)
        return {f"{method}_error": str(e)}
    res: dict = {
        f"{method}_build_s": round(time.perf_counter() - t, 1),
        f"kv_blocks_{method}": engine.runner.num_blocks,
    }
    res[f"tuneloop_b1_{method}"] = batch1(engine, shape["vocab_size"])
    print(f"tuneloop b1 {method}", res[f"tuneloop_b1_{method}"], flush=True)
    res[f"tuneloop_256_{method}"] = offline(engine, shape["vocab_size"], 16 if tiny else 256)
    print(f"tuneloop 256 {method}", res[f"tuneloop_256_{method}"], flush=True)
    if device == "cuda":
        res[f"peak_memory_gib_{method}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


if __name__ == "__main__":
    main()
