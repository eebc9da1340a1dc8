"""What failure isolation costs a healthy engine (issue 17): offline throughput, this tree against
the engine before it (a step that computes, then commits; per-row sampling guards; RequestStream).

One run of this script measures one source tree; run it for both trees, alternating, on one card,
then `--compare` prints the ratios. Random weights (speed does not depend on values); explicit
engine settings, so both trees run the same configuration whatever their defaults:

    mkdir .isobase && git archive 3267be2 src | tar -x -C .isobase   # the engine before isolation
    for i in 1 2; do
        PYTHONPATH=.isobase/src python3 benchmarks/engine_isolation_overhead.py $OUT/base-$i.json
        PYTHONPATH=src python3 benchmarks/engine_isolation_overhead.py $OUT/head-$i.json
    done
    python3 benchmarks/engine_isolation_overhead.py --compare $OUT/base-*.json -- $OUT/head-*.json

Workloads: 256 requests x (128 prompt + 128 new tokens), greedy and seeded sampling, on the tiny
shape (host-bound: the per-step Python overhead shows most) and the Llama-3-8B shape (bf16);
`--tiny-only` skips the latter; `--cpu` runs the tiny shape on the CPU (32 requests).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_gpu import LLAMA3_8B, TINY, build_engine, prompts

import tuneloop
from tuneloop.engine import SamplingParams

CPU = "--cpu" in sys.argv  # the tiny shape on this machine's CPU, 32 requests (no overlap to hide there)
DEVICE = "cpu" if CPU else "cuda"
N, PROMPT, NEW = (32 if CPU else 256), 128, 128
SETTINGS = {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "prefill_attention": "padded"}


def sync() -> None:
    if not CPU:
        torch.cuda.synchronize()


def run(shape: dict, kinds: dict[str, SamplingParams], reps: int = 3) -> dict:
    """One engine for the shape; each kind timed `reps` times on fresh prompts (no prefix-cache hits)."""
    engine = build_engine(shape, DEVICE, kv_cache_gib=1 if CPU else 8, **SETTINGS)
    engine.generate(prompts(N, shape["vocab_size"], seed=99), kinds["greedy"])  # warm-up (compile, graphs)
    result = {}
    for k, (kind, params) in enumerate(kinds.items()):
        times = []
        for rep in range(reps):
            ps = prompts(N, shape["vocab_size"], seed=10 * k + rep)
            sync()
            t0 = time.perf_counter()
            outs = engine.generate(ps, params)
            sync()
            times.append(time.perf_counter() - t0)
            assert sum(len(o.token_ids) for o in outs) == N * NEW
        result[kind] = {"tokens_per_s": round(N * NEW / statistics.median(times), 1),
                        "times_s": [round(t, 3) for t in times]}  # fmt: skip
    del engine
    if not CPU:
        torch.cuda.empty_cache()
    return result


def measure(out: Path) -> None:
    kinds = {
        "greedy": SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True),
        "seeded": SamplingParams(max_tokens=NEW, temperature=0.8, top_p=0.95, seed=1, ignore_eos=True),
    }
    device = "cpu" if CPU else torch.cuda.get_device_name()
    result = {"tree": tuneloop.__file__, "device": device, "requests": N}
    tiny = CPU or "--tiny-only" in sys.argv
    shapes = {"tiny": TINY} if tiny else {"tiny": TINY, "llama3-8b": LLAMA3_8B}
    for name, shape in shapes.items():
        for kind, row in run(shape, kinds).items():
            result[f"{name}/{kind}"] = row
            print(name, kind, row, flush=True)
        out.write_text(json.dumps(result, indent=1))


def compare(base: list[Path], head: list[Path]) -> None:
    """Median tokens/s over the runs of each tree, and head / base."""
    load = [json.loads(p.read_text()) for p in base], [json.loads(p.read_text()) for p in head]
    keys = [k for k in load[0][0] if "/" in k]
    rows = {}
    for k in keys:
        b = statistics.median(r[k]["tokens_per_s"] for r in load[0] if k in r)
        h = statistics.median(r[k]["tokens_per_s"] for r in load[1] if k in r)
        rows[k] = {"base_tokens_per_s": b, "head_tokens_per_s": h, "ratio": round(h / b, 3)}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        cut = sys.argv.index("--")
        compare([Path(p) for p in sys.argv[2:cut]], [Path(p) for p in sys.argv[cut + 1 :]])
    else:
        measure(Path(sys.argv[1]))
