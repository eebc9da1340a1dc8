"""int8 / int4 (bitsandbytes) and 2:4 sparsity (sparse tensor cores) on a CUDA GPU.
Results: BENCHMARKS.md "export: compression measured", GPU part (benchmarks/export_gpu_h100.json).

    python benchmarks/export_gpu.py --out /tmp/export-gpu --json export_gpu.json

The device machine has no network and a 64 MiB upload limit, so the real default model cannot
travel there: the models are built in place with random weights in the default model's shape
(SmolLM2-135M) and a Llama-3.2-1B shape. Size and latency do not depend on weight values;
perplexity of random weights means nothing and is not reported from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = {
    "smollm2-135m-shape": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
    "llama-1b-shape": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
    ),
}  # fmt: skip
TRANSFORMS = {"int8": {"quantize": "int8"}, "int4": {"quantize": "int4"}, "2:4": {"prune_pattern": "2:4"}}


def build(folder: Path, shape: dict) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tuneloop.models.tiny import build_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=8192, rope_theta=100000.0, **shape)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    build_tokenizer().save_pretrained(str(folder))
    return folder


def main() -> None:
    from tuneloop.export.pipeline import ExportOptions, run_export

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/export-gpu"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for shape_name, shape in SHAPES.items():
        src = build(args.out / shape_name / "source", shape)
        for name, opts in TRANSFORMS.items():
            key = f"{shape_name} {name}"
            t = time.perf_counter()
            try:
                out = args.out / shape_name / name.replace(":", "_")
                work = {"repeats": args.repeats, "load_tries": 2}
                report = run_export(str(src), ExportOptions(out=out, device="cuda", workload=work, **opts))
                results[key] = {**report.to_dict(), "wall_s": time.perf_counter() - t}
                r = report.ratios()
                print(
                    f"{key}: size x{r['size_bytes']:.3f} ttft x{r['ttft_s']:.3f} per-token x{r['per_token_s']:.3f}",
                    flush=True,
                )
            except Exception as e:  # one failing transform must not lose the others' numbers
                results[key] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
                print(f"{key}: FAILED {results[key]['error']}", flush=True)
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
