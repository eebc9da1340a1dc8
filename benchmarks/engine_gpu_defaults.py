"""What a user gets with no settings (issue 21): the engine at its defaults on one GPU, in one run.

Llama-3-8B-shaped random bf16 weights (speed does not depend on values), built once and shared by
every engine below. Each engine is `EngineConfig(model=folder)` plus only what a row names, so the
rows measure the defaults that `LLMEngine.from_pretrained(folder)` and `tuneloop serve --model X`
give (engine/sizing.py decides them for the card).

Phases (each writes $OUT/engine_gpu_defaults.json as it goes, so a cut-off run keeps what it has):
  baseline  transformers `generate_batch`, 256 requests x (128 + 128) (../shared/bench/hf_baseline_gpu.py)
  offline   the same 256 requests at the defaults (twice, fresh prompts each), batch-1 decode, and the
            256 run with max_num_batched_tokens=4096 (the other tier) on the same card
  lora      8 random rank-16 adapters (all linear layers), 64 requests of 128 + 128, against the
            base model alone on the same engine (defaults: LoRA decode steps replay CUDA graphs)
  long      8 concurrent 8k-token prompts and one 32k-token prompt (max_model_len 32768): TTFT,
            tokens/s and peak memory; no OOM
  tiers     the 256 run once more at 256 / 2,048 and 128 / 8,192 (which knob moves it)

    PYTHONPATH=src:.devcarry python3 benchmarks/engine_gpu_defaults.py $OUT [--phases baseline,offline,lora,long]
        [--lora-kw JSON]

--tiny runs every phase but the baseline on the CPU with a tiny model (a smoke test of the script).
"""

from __future__ import annotations

import functools
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.engine import EngineConfig, LLMEngine, SamplingParams
from tuneloop.engine.models.llama import random_llama

sys.path.insert(0, str(Path(__file__).parent))
from engine_gpu import LLAMA3_8B, TINY, batch1, offline, sync
from engine_gpu_features import adapter, timed

RESULT: dict = {}
TINY_RUN = "--tiny" in sys.argv
DEVICE = "cpu" if TINY_RUN else "cuda"
N = 16 if TINY_RUN else 256  # requests of the offline runs


def save(out: Path) -> None:
    (out / "engine_gpu_defaults.json").write_text(json.dumps(RESULT, indent=1))


def settings(engine: LLMEngine) -> dict:
    c = engine.config
    return {f: getattr(c, f) for f in ("max_num_seqs", "max_num_batched_tokens", "prefill_attention",
                                       "lora_in_graph", "async_scheduling", "max_model_len")} | {
        "kv_blocks": engine.runner.num_blocks, "async": engine.async_scheduling,
        "graphs": engine.runner.graphs is not None, "varlen_kernel": engine.runner.varlen_kernel}  # fmt: skip


def free(engine: LLMEngine | None) -> None:
    del engine
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def build(model, shape: dict, **kw) -> LLMEngine:
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    if TINY_RUN:
        kw.setdefault("kv_cache_gib", 0.05)
    t = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=str(folder), device=DEVICE, **kw), model=model)
    RESULT.setdefault("build_s", []).append(round(time.perf_counter() - t, 1))
    return engine


def phase_offline(model, shape: dict, out: Path) -> None:
    vocab = shape["vocab_size"]
    engine = build(model, shape)
    RESULT["defaults"] = settings(engine)
    print("defaults", RESULT["defaults"], flush=True)
    RESULT["default_256"] = offline(engine, vocab, N, seed=3)
    RESULT["default_256_again"] = offline(engine, vocab, N, seed=23)
    RESULT["default_b1"] = batch1(engine, vocab)
    print(
        "default 256",
        RESULT["default_256"],
        RESULT["default_256_again"],
        "b1",
        RESULT["default_b1"],
        flush=True,
    )
    save(out)
    free(engine)
    engine = build(model, shape, max_num_batched_tokens=4096)
    RESULT["tokens_4096_256"] = offline(engine, vocab, N, seed=33)
    RESULT["tokens_4096_256_again"] = offline(engine, vocab, N, seed=43)
    print("4096 tokens", RESULT["tokens_4096_256"], RESULT["tokens_4096_256_again"], flush=True)
    save(out)
    free(engine)


def phase_tiers(model, shape: dict, out: Path) -> None:
    vocab = shape["vocab_size"]
    for seqs, tokens in ((256, 2048), (128, 8192), (64, 2048)):
        if TINY_RUN:
            seqs, tokens = seqs // 16, tokens // 16
        engine = build(model, shape, max_num_seqs=seqs, max_num_batched_tokens=tokens)
        RESULT[f"seqs{seqs}_tokens{tokens}_256"] = r = offline(engine, vocab, N, seed=53 + seqs)
        print(seqs, tokens, r, flush=True)
        save(out)
        free(engine)


def phase_lora(model, shape: dict, out: Path) -> None:
    vocab = shape["vocab_size"]
    g = torch.Generator().manual_seed(7)
    n = 8 if TINY_RUN else 64
    ps = [torch.randint(100, vocab - 1, (128,), generator=g).tolist() for _ in range(n)]
    # prefix cache off: the base run would otherwise leave the prompts cached; --lora-kw JSON adds
    # settings (e.g. '{"prefill_attention": "padded", "max_num_batched_tokens": 4096}')
    extra = json.loads(sys.argv[sys.argv.index("--lora-kw") + 1]) if "--lora-kw" in sys.argv else {}
    engine = build(model, shape, prefix_caching=False, **extra)
    RESULT["lora_settings"] = settings(engine)
    timed(engine, ps[:2], 4)
    RESULT["lora_base_64"] = timed(engine, ps, 128)
    tmp = Path(tempfile.mkdtemp())
    for k in range(8):
        engine.load_lora(f"a{k}", adapter(tmp / f"a{k}", shape, 4 if TINY_RUN else 16, k))
    names = [f"a{k % 8}" for k in range(n)]
    timed(engine, ps[:2], 4, lora=names[:2])
    RESULT["lora_8_adapters_64"] = timed(engine, ps, 128, lora=names)
    RESULT["lora_vs_base"] = round(
        RESULT["lora_8_adapters_64"]["output_tokens_per_s"] / RESULT["lora_base_64"]["output_tokens_per_s"], 2
    )
    graphs = engine.runner.graphs
    RESULT["lora_graphs_captured"] = bool(graphs is not None and graphs.lora_graphs)
    print("lora", RESULT["lora_base_64"], RESULT["lora_8_adapters_64"], RESULT["lora_vs_base"], flush=True)
    save(out)
    if "--profile" in sys.argv and torch.cuda.is_available():
        # where the adapters' time goes: every kernel (inside graph replays too) of one run each
        for name, kw in (("base", {}), ("lora", {"lora": names})):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                timed(engine, ps, 128, **kw)
            events = prof.key_averages()
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            RESULT[f"lora_profile_{name}"] = {
                "kernels": sum(e.count for e in kernels),
                "cuda_ms": round(sum(e.self_device_time_total for e in kernels) / 1000, 1),
            }
            (out / f"lora_profile_{name}.txt").write_text(
                events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90)
            )
        print("profile", RESULT["lora_profile_base"], RESULT["lora_profile_lora"], flush=True)
        save(out)
    free(engine)


def long_run(engine: LLMEngine, ps: list[list[int]], new: int) -> dict:
    p = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    for pr in ps:
        engine.add_request(pr, p)
    first: dict[str, float] = {}
    while engine.has_unfinished():
        for o in engine.step():
            first.setdefault(o.request_id, time.perf_counter() - t)
    sync()
    dt = time.perf_counter() - t
    ttft = sorted(first.values())
    return {"requests": len(ps), "prompt_tokens": sum(map(len, ps)), "new_tokens": new, "seconds": round(dt, 2),
            "ttft_s_first": round(ttft[0], 3), "ttft_s_last": round(ttft[-1], 3),
            "prefill_tokens_per_s": round(sum(map(len, ps)) / ttft[-1], 1),
            "output_tokens_per_s": round(len(ps) * new / dt, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
            "preemptions": engine.stats().preemptions}  # fmt: skip


def phase_long(model, shape: dict, out: Path, split: bool = False) -> None:
    """8 x 8k and 1 x 32k prompts, then batch 1 at a short context, where split-KV only adds its
    combine kernel; phase long runs without split-KV (the baseline), phase longsplit with it (the
    default since it measured faster)."""
    vocab = shape["vocab_size"]
    # a 32k-context model (as Llama 3.1's config says); the random weights' rotary works at any position
    long_shape = {**shape, "max_position_embeddings": 32768}
    scale = 64 if TINY_RUN else 1
    engine = build(model, long_shape, max_model_len=32768 // scale, split_kv_decode=split)
    tag = "_split" if split else ""
    RESULT[f"long{tag}_settings"] = settings(engine)
    g = torch.Generator().manual_seed(11)
    engine.generate([torch.randint(100, vocab - 1, (1024 // scale,), generator=g).tolist()],
                    SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # fmt: skip
    eight = [torch.randint(100, vocab - 1, (8192 // scale,), generator=g).tolist() for _ in range(8)]
    RESULT[f"long{tag}_8x8k"] = long_run(engine, eight, 128 // scale)
    print("8 x 8k", RESULT[f"long{tag}_8x8k"], flush=True)
    save(out)
    one = [torch.randint(100, vocab - 1, (32000 // scale,), generator=g).tolist()]
    RESULT[f"long{tag}_1x32k"] = long_run(engine, one, 128 // scale)
    print("1 x 32k", RESULT[f"long{tag}_1x32k"], flush=True)
    save(out)
    short = [torch.randint(100, vocab - 1, (128 // scale,), generator=g).tolist()]
    RESULT[f"long{tag}_1x128"] = long_run(engine, short, 128 // scale)
    print("1 x 128", RESULT[f"long{tag}_1x128"], flush=True)
    save(out)
    free(engine)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    phases = ["baseline", "offline", "lora", "long"]
    if "--phases" in sys.argv:
        phases = sys.argv[sys.argv.index("--phases") + 1].split(",")
    RESULT.update(device=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", torch=torch.__version__,
                  phases=phases)  # fmt: skip
    shape = dict(TINY if TINY_RUN else LLAMA3_8B)
    if "baseline" in phases and not TINY_RUN:
        import hf_baseline_gpu as hf

        hf_model = hf.build_model()
        RESULT["hf_generate_batch_256"] = hf.hf_continuous_batching(hf_model)
        print("hf generate_batch", RESULT["hf_generate_batch_256"], flush=True)
        save(out)
        del hf_model
        gc.collect()
        torch.cuda.empty_cache()
    model = random_llama(shape, torch.float32 if TINY_RUN else torch.bfloat16, DEVICE)
    for name in phases:
        fn = {
            "offline": phase_offline,
            "lora": phase_lora,
            "long": phase_long,
            "tiers": phase_tiers,
            "longsplit": functools.partial(phase_long, split=True),
        }.get(name)
        if fn is not None:
            t = time.perf_counter()
            fn(model, shape, out)
            RESULT[f"{name}_phase_s"] = round(time.perf_counter() - t, 1)
            save(out)
    base = RESULT.get("hf_generate_batch_256", {}).get("output_tokens_per_s")
    if base:
        for key in ("default_256", "default_256_again", "tokens_4096_256", "tokens_4096_256_again"):
            if key in RESULT:
                RESULT[f"ratio_{key}"] = round(RESULT[key]["output_tokens_per_s"] / base, 2)
    save(out)
    print(json.dumps(RESULT, indent=1), flush=True)


if __name__ == "__main__":
    main()
