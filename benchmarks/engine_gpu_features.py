"""Engine features on one GPU (issue 11): prefix caching and multi-LoRA, each against its baseline
in the same run. Llama-3-8B-shaped random bf16 weights (speed does not depend on values).

- Prefix caching: 64 requests = one shared 1,024-token system prompt + 64 tokens of their own,
  64 new tokens each; the same engine settings with the prefix cache on and off.
- Multi-LoRA: 64 requests of 128 + 128 tokens, each on one of 8 random rank-16 adapters (all
  linear layers), against the same requests on the base model alone. The adapters run on the
  stacked path (LoRAManager.mode = "stacked": one batched matmul per module for all adapters of a
  step; the --tiny CPU run too, so that path is exercised), prefix cache off (the base run would
  otherwise leave the same prompts cached for the adapter run).

--lora-in-graph: the LoRA engine sets EngineConfig.lora_in_graph (decode steps with adapters replay
CUDA graphs over fixed slot buffers of max_lora_rank 16; prompt chunks stay stacked; the --tiny CPU
run has no graphs and takes the slot path for every step instead); --lora-slot-math auto|gather|masked
picks the formula over the slot buffers (LoRAManager.slot_math, lora.py). --lora-only skips the
prefix-cache part.

    PYTHONPATH=src python3 benchmarks/engine_gpu_features.py $OUT [--tiny] [--lora-only]
        [--lora-in-graph [--lora-slot-math auto|gather|masked]]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.engine import EngineConfig, LLMEngine, SamplingParams
from tuneloop.engine.models.llama import random_llama

sys.path.insert(0, str(Path(__file__).parent))
from engine_gpu import LLAMA3_8B, TINY, sync

MODULES = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def engine_for(model, folder: Path, **kw) -> LLMEngine:
    if DEVICE == "cpu":
        kw["kv_cache_gib"] = 0.05
    cfg = EngineConfig(model=str(folder), device=DEVICE, dtype="bfloat16" if DEVICE == "cuda" else "float32",
                       max_num_seqs=256, max_num_batched_tokens=4096, **kw)  # fmt: skip
    return LLMEngine(cfg, model=model)


def timed(engine: LLMEngine, prompts: list[list[int]], new: int, lora: list | None = None) -> dict:
    p = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    sync()
    t = time.perf_counter()
    outs = engine.generate(prompts, p, lora=lora)
    sync()
    dt = time.perf_counter() - t
    tokens = sum(len(o.token_ids) for o in outs)
    return {"requests": len(prompts), "seconds": round(dt, 3), "output_tokens_per_s": round(tokens / dt, 1)}


def adapter(folder: Path, shape: dict, rank: int, seed: int) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    h, i, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_key_value_heads"] * head_dim
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for block, names in MODULES.items():
            for name in names:
                d_in, d_out = dims[name]
                key = f"base_model.model.model.layers.{layer}.{block}.{name}"
                tensors[f"{key}.lora_A.weight"] = (
                    torch.randn(rank, d_in, generator=g, dtype=torch.bfloat16) * 0.01
                )
                tensors[f"{key}.lora_B.weight"] = (
                    torch.randn(d_out, rank, generator=g, dtype=torch.bfloat16) * 0.01
                )
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    targets = [n for names in MODULES.values() for n in names]
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                            "target_modules": targets}))  # fmt: skip
    return folder


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    tiny = "--tiny" in sys.argv
    in_graph = "--lora-in-graph" in sys.argv
    math = sys.argv[sys.argv.index("--lora-slot-math") + 1] if "--lora-slot-math" in sys.argv else "auto"
    shape = TINY if tiny else LLAMA3_8B
    n, sys_len = (8, 64) if tiny else (64, 1024)
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    model = random_llama(shape, torch.bfloat16 if DEVICE == "cuda" else torch.float32, DEVICE)
    g = torch.Generator().manual_seed(0)
    vocab = shape["vocab_size"]
    res: dict = {
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
    }

    system = torch.randint(100, vocab - 1, (sys_len,), generator=g).tolist()
    shared = [system + torch.randint(100, vocab - 1, (64,), generator=g).tolist() for _ in range(n)]
    if "--lora-only" not in sys.argv:
        prefix_cache(model, folder, shared, res)
    lora(model, folder, shape, [torch.randint(100, vocab - 1, (128,), generator=g).tolist() for _ in range(n)],
         in_graph, tiny, res, math)  # fmt: skip
    name = f"engine_gpu_features_lora_in_graph_{math}.json" if in_graph else "engine_gpu_features.json"
    (out / name).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def prefix_cache(model, folder: Path, shared: list[list[int]], res: dict) -> None:
    for on in (True, False):
        eng = engine_for(model, folder, prefix_caching=on)
        timed(eng, shared[:2], 4)  # warm-up (and, with the cache on, the shared prompt is now cached)
        r = timed(eng, shared, 64)
        r["prefix_cache_hit_rate"] = round(eng.stats().prefix_cache_hit_rate, 3)
        res[f"prefix_cache_{'on' if on else 'off'}"] = r
        print("prefix cache", on, r, flush=True)
        del eng
        torch.cuda.empty_cache()
    res["prefix_cache_speedup"] = round(
        res["prefix_cache_on"]["output_tokens_per_s"] / res["prefix_cache_off"]["output_tokens_per_s"], 2
    )


def lora(
    model,
    folder: Path,
    shape: dict,
    prompts: list[list[int]],
    in_graph: bool,
    tiny: bool,
    res: dict,
    math: str = "auto",
) -> None:
    n = len(prompts)
    eng = engine_for(model, folder, prefix_caching=False, lora_in_graph=in_graph, max_lora_rank=16)
    res["lora_in_graph"] = in_graph
    timed(eng, prompts[:2], 4)
    res["base_64"] = timed(eng, prompts, 128)
    print("base", res["base_64"], flush=True)
    tmp = Path(tempfile.mkdtemp())
    for k in range(8):
        eng.load_lora(f"a{k}", adapter(tmp / f"a{k}", shape, 4 if tiny else 16, k))
    # GPU: stacked for the eager steps (prompt chunks; with lora_in_graph decodes replay graphs)
    eng.lora.mode = res["lora_mode"] = "slots" if in_graph and DEVICE == "cpu" else "stacked"
    if in_graph:
        eng.lora.slot_math = res["lora_slot_math"] = math  # before the warm-up: LoRA graphs capture lazily
    names = [f"a{k % 8}" for k in range(n)]
    timed(eng, prompts[:2], 4, lora=names[:2])
    res["lora_8_adapters_64"] = timed(eng, prompts, 128, lora=names)
    print("8 adapters", res["lora_8_adapters_64"], flush=True)
    res["lora_vs_base"] = round(
        res["lora_8_adapters_64"]["output_tokens_per_s"] / res["base_64"]["output_tokens_per_s"], 2
    )
    graphs = eng.runner.graphs
    res["lora_graphs_captured"] = bool(graphs is not None and graphs.lora_graphs)


if __name__ == "__main__":
    main()
