"""`tuneloop export --gguf TYPE` on the default model: size, write time, load time, perplexity and
greedy-answer agreement with the source, per GGUF type, measured in one process.

    python benchmarks/export_gguf.py --out /tmp/gguf-bench --json benchmarks/export_gguf_cpu.json

The source (the pulled HF folder, bf16 weights) is measured once and reused as every export's
"before". Every "after" is the GGUF loaded back by transformers' GGUF loader (dequantized to fp32):
its perplexity and answers are the file's, its load time and latency are PyTorch's. When
llama-cpp-python is importable, each file is also loaded and run by llama.cpp itself (load time,
greedy tokens/s through its chat completion with the embedded template).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tuneloop.export.measure import PROMPTS, Workload, measure
from tuneloop.export.pipeline import ExportOptions, run_export
from tuneloop.models.catalog import DEFAULT_MODEL
from tuneloop.models.formats import GGUF_FILE
from tuneloop.models.resolve import resolve_model

TYPES = ["f16", "bf16", "q8_0", "q5_1", "q4_1", "q4_0"]


def prefix_agreement(before: list[list[int]], after: list[list[int]]) -> float:
    """Mean share of each greedy answer that is identical before the first differing token."""
    shares = []
    for a, b in zip(before, after, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), 1))
    return sum(shares) / len(shares)


def llama_cpp_row(folder: Path, tokens: int) -> dict | None:
    """llama.cpp's own load and greedy decoding of the file, when llama-cpp-python is installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    t = time.perf_counter()
    llm = Llama(model_path=str(folder / GGUF_FILE), n_ctx=512, verbose=False)
    load_s = time.perf_counter() - t
    t, made = time.perf_counter(), 0
    for prompt in PROMPTS:
        out = llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0.0
        )
        made += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - t
    del llm
    return {"load_s": load_s, "tokens_per_s": made / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--out", type=Path, default=Path("/tmp/gguf-bench"))
    ap.add_argument("--latency-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    source = resolve_model(args.model, pull=True)
    workload = {"repeats": args.repeats, "latency_tokens": args.latency_tokens, "load_tries": 1}
    before = measure(source.path, "cpu", Workload(**workload))
    results: dict[str, dict] = {"source": {"before": before.to_dict()}}
    shutil.rmtree(args.out, ignore_errors=True)
    for kind in args.types.split(","):
        t = time.perf_counter()
        report = run_export(
            args.model,
            ExportOptions(gguf=kind, out=args.out / kind, device="cpu", workload=workload, before=before),
        )
        row = report.to_dict()
        row["export_s"] = time.perf_counter() - t
        row["prefix_agreement"] = prefix_agreement(before.greedy_tokens, report.after.greedy_tokens)
        row["llama_cpp"] = llama_cpp_row(args.out / kind, args.latency_tokens)
        results[kind] = row
        print(line(kind, row), flush=True)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


def line(kind: str, r: dict) -> str:
    a, q = r["after"], r["ratios"]
    agree = r["quality"]["greedy_agreement"]
    cpp = r["llama_cpp"]
    cpp_cell = (
        "not installed" if cpp is None else f"load {cpp['load_s']:.2f} s, {cpp['tokens_per_s']:.1f} tok/s"
    )
    return (
        f"| {kind} | {a['size_bytes'] / 1e6:.0f} ({q['size_bytes']:.2f}x) | {r['export_s']:.0f} | "
        f"{a['load_s']:.1f} ({q['load_s']:.2f}x) | {a['perplexity']:.3f} ({q['perplexity'] - 1:+.2%}) | "
        f"{agree:.0%} | {r['prefix_agreement']:.0%} | {cpp_cell} |"
    )


def markdown(results: dict[str, dict]) -> str:
    b = results["source"]["before"]
    head = [
        f"source: {b['size_bytes'] / 1e6:.0f} MB, load {b['load_s']:.1f} s, perplexity {b['perplexity']:.3f}",
        "",
        "| --gguf | size MB (vs source) | export s | load s, transformers (vs source) | perplexity (change) "
        "| greedy answers identical | identical prefix | llama.cpp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [line(k, r) for k, r in results.items() if k != "source"])


if __name__ == "__main__":
    main()
