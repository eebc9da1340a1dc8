"""How long a streamed training loop waits for its examples: in-process (num_workers=0) against
DataLoader workers (loader.py) that read, parse, tokenize and pack ahead.

python benchmarks/train_streaming_workers.py MODEL_DIR [STEPS] [COMPUTE_MS] [sleep|cpu]
Writes chat rows as shards, then takes a global batch of 16 packed examples (max_length 512) per
step; the "step" itself sleeps COMPUTE_MS (`sleep`: a stand-in for a GPU step that leaves the CPU
free) or multiplies matrices on the CPU for COMPUTE_MS (`cpu`: a CPU training step, which competes
with the workers for the cores). Prints per num_workers the wall seconds per step and the share of it
spent waiting in take(), after 2 warm-up steps (the workers' start).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.data.layout import open_split
from tuneloop.models.loading import load_tokenizer
from tuneloop.train.loader import LoadedMixture, Sources
from tuneloop.train.mixture import Entry, Mixture
from tuneloop.train.streaming import RowFiles, ShardStream, Tokenizing

BATCH, WARMUP = 16, 2


def write_rows(folder: Path, rows: int, shard: int = 5000) -> None:
    names, outputs = [], {}
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for k in range(0, rows, shard):
        name = f"train/part-{k // shard:05d}.jsonl"
        with (folder / name).open("w") as f:
            for i in range(k, min(rows, k + shard)):
                q = f"Question {i}: explain item {i} " + "in detail " * (i % 20)
                a = f"Answer {i}: " + "it is a thing that matters. " * (5 + i % 30)
                msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                f.write(json.dumps({"messages": msgs}) + "\n")
        names.append(name)
        outputs[name] = {"rows": min(rows, k + shard) - k, "bytes": (folder / name).stat().st_size}
    manifest = {"fingerprint": "bench", "counts": {"train_rows": rows, "val_rows": 0}, "outputs": outputs,
                "shards": {"train": names, "val": []}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))


def busy(seconds: float) -> None:
    a = torch.randn(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def measure(stream, steps: int, compute_s: float, mode: str) -> dict[str, float]:
    for _ in range(WARMUP):
        stream.take(BATCH)
    waited, started = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        stream.take(BATCH)
        waited += time.perf_counter() - t
        time.sleep(compute_s) if mode == "sleep" else busy(compute_s)
    total = time.perf_counter() - started
    return {"s_per_step": round(total / steps, 4), "data_wait_share": round(waited / total, 3)}


def main(model: str, steps: int, compute_ms: float, mode: str) -> None:
    folder = Path(tempfile.mkdtemp())
    write_rows(folder, 20_000)
    split = open_split(str(folder), "train")
    how = Tokenizing(load_tokenizer(model), "sft", 512, "truncate", True)
    entries = [Entry("bench", 1.0)]
    out: dict[str, dict[str, float]] = {}
    for workers in (0, 1, 2):
        if workers == 0:
            stream = Mixture([ShardStream(RowFiles(split), how, 42, 1000)], entries, 1)
        else:
            stream = LoadedMixture(
                Sources([RowFiles(split)], how, 42, 1000, entries), 1, 0, 1, workers, BATCH
            )
        out[f"num_workers={workers}"] = measure(stream, steps, compute_ms / 1000, mode)
        if workers:
            stream.close()
    base = out["num_workers=0"]["s_per_step"]
    for row in out.values():
        row["speedup_vs_0"] = round(base / row["s_per_step"], 2)
    print(
        json.dumps({"steps": steps, "compute_ms": compute_ms, "mode": mode, "batch": BATCH, **out}, indent=1)
    )


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    main(args[0], int(args[1] or 40), float(args[2] or 100), args[3] or "sleep")
