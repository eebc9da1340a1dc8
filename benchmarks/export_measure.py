"""Measure every `tuneloop export` transform on the real default model and the acme LoRA adapter.

    TUNELOOP_HOME=/tmp/tlhome python benchmarks/export_measure.py --adapter /tmp/acme-run/model \
        --eval-data examples/acme-kb/qa/heldout.jsonl --out /tmp/export-bench --json benchmarks/export_cpu.json

Each transform is one `run_export` of the merged acme model; the merged model is measured once
(the merge's "after") and reused as every transform's "before" in this process (with
--remeasure each export measures it again). A bf16 row of the merged model separates what
int8/int4 gain from quantization from what they gain from bf16 activations.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

from tuneloop.export.pipeline import ExportOptions, run_export

TRANSFORMS = {
    "int8": {"quantize": "int8"},
    "int4": {"quantize": "int4"},
    "prune 0.3": {"prune": 0.3},
    "prune 0.5": {"prune": 0.5},
    "onnx": {"onnx": True},
}


def bf16_row(merged: Path, eval_data: Path, workload: dict) -> dict:
    """The merged model with bf16 weights and activations, through the same measurement."""
    import torch

    from tuneloop.evaluation.perplexity import perplexity
    from tuneloop.export.measure import Workload, _ppl_examples, latency, task_scores
    from tuneloop.models.loading import load_model, load_tokenizer

    work = Workload.from_file(eval_data, **workload)
    model, tokenizer = load_model(merged, "cpu", dtype=torch.bfloat16), load_tokenizer(merged)
    ttft, per_token = latency(model, tokenizer, work)
    ppl = perplexity(model, _ppl_examples(tokenizer, work), batch_size=4).perplexity
    task = task_scores(model, tokenizer, work)
    return {"ttft_s": ttft, "per_token_s": per_token, "perplexity": ppl, "task": task}


def markdown(results: dict[str, dict]) -> str:
    """One table: each transform's before -> after and after/before, as BENCHMARKS.md shows it."""
    head = "| transform | size MB | load s | TTFT ms | ms/token | perplexity | task score |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "before" not in r:
            lines.append(_bf16_line(name, r))
            continue
        b, a, q = r["before"], r["after"], r["ratios"]
        cells = [
            f"{b['size_bytes'] / 1e6:.0f} → {a['size_bytes'] / 1e6:.0f} ({q['size_bytes']:.2f}x)",
            f"{b['load_s']:.2f} → {a['load_s']:.2f} ({q['load_s']:.2f}x)",
            f"{b['ttft_s'] * 1e3:.0f} → {a['ttft_s'] * 1e3:.0f} ({q['ttft_s']:.2f}x)",
            f"{b['per_token_s'] * 1e3:.1f} → {a['per_token_s'] * 1e3:.1f} ({q['per_token_s']:.2f}x)",
            f"{b['perplexity']:.3f} → {a['perplexity']:.3f} ({q['perplexity'] - 1:+.1%})",
            f"{_score(b)} → {_score(a)}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score(m: dict) -> str:
    return "-" if m.get("task_score") is None else f"{m['task_score']:.3f}"


def _bf16_line(name: str, r: dict) -> str:
    score = r["task"].get("contains_answer")
    return (
        f"| {name} | - | - | {r['ttft_s'] * 1e3:.0f} | {r['per_token_s'] * 1e3:.1f} | "
        f"{r['perplexity']:.3f} | {'-' if score is None else f'{score:.3f}'} |"
    )


def baseline(report_merge, transform: str):
    """The merged model's measurement, with its sparsity counted (0) when the transform prunes."""
    before = copy.copy(report_merge.after)
    before.sparsity = 0.0 if transform.startswith("prune") else None
    return before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--eval-data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/export-bench"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-samples", type=int, default=58)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-tokens", type=int, default=32)
    parser.add_argument(
        "--remeasure", action="store_true", help="measure the merged baseline in every export"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    parser.add_argument(
        "--only", nargs="*", default=None, help="subset of: merge bf16 " + " ".join(TRANSFORMS)
    )
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    workload = {
        "max_samples": args.max_samples, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "latency_tokens": args.latency_tokens,
    }  # fmt: skip
    results: dict[str, dict] = {}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")

    merged = args.out / "merged"
    t = time.perf_counter()
    report_merge = run_export(
        str(args.adapter),
        ExportOptions(
            merge=True, out=merged, eval_data=args.eval_data, device=args.device, workload=workload
        ),
    )
    results["merge"] = {**report_merge.to_dict(), "wall_s": time.perf_counter() - t}
    save()
    if args.only is None or "bf16" in args.only:
        results["bf16 (merged, no quantization)"] = bf16_row(merged, args.eval_data, workload)
        save()
    for name, opts in TRANSFORMS.items():
        if args.only is not None and name not in args.only:
            continue
        t = time.perf_counter()
        out = args.out / name.replace(" ", "-")
        before = None if args.remeasure else baseline(report_merge, name)
        options = ExportOptions(
            out=out, eval_data=args.eval_data, device=args.device, workload=workload, before=before, **opts
        )
        report = run_export(str(merged), options)
        results[name] = {**report.to_dict(), "wall_s": time.perf_counter() - t}
        save()
        r = results[name]["ratios"]
        print(
            f"{name}: size x{r['size_bytes']:.3f} per-token x{r['per_token_s']:.3f} ppl x{r['perplexity']:.4f}",
            flush=True,
        )
    print(markdown(results))


if __name__ == "__main__":
    main()
