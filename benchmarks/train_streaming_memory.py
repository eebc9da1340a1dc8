"""Memory of the training data: the in-memory path (read_rows + tokenize) against the stream.

python benchmarks/train_streaming_memory.py MODEL_DIR [ROWS]
Writes ROWS pretraining rows as shards, then in a fresh process each: reads and tokenizes them all
(as `train` without streaming) or streams them (window 1000), and prints the RSS growth (MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import gc, sys, psutil
from tuneloop.data.layout import open_split
from tuneloop.models.loading import load_tokenizer
from tuneloop.train.dataset import read_rows, tokenize
from tuneloop.train.streaming import RowFiles, ShardStream, Tokenizing
tok = load_tokenizer(sys.argv[1]); split = open_split(sys.argv[2], "train"); rows = split.rows
rss = lambda: psutil.Process().memory_info().rss / 2**20
gc.collect(); start = rss()
if sys.argv[3] == "list":
    kept = tokenize(read_rows(split, "pretrain"), tok, "pretrain", 64, "truncate")
else:
    s = ShardStream(RowFiles(split), Tokenizing(tok, "pretrain", 64, "truncate", False), 42, 1000)
    for _ in range(rows):
        s.next()
gc.collect(); print(rss() - start)
"""


def main(model: str, rows: int) -> None:
    folder = Path(tempfile.mkdtemp())
    names, outputs = [], {}
    for k in range(0, rows, 5000):
        name = f"train/part-{k // 5000:05d}.jsonl"
        (folder / "train").mkdir(exist_ok=True)
        text = "".join(
            json.dumps({"text": f"row {i} " + "x" * 120}) + "\n" for i in range(k, min(rows, k + 5000))
        )
        (folder / name).write_text(text)
        names.append(name)
        outputs[name] = {"rows": min(rows, k + 5000) - k, "bytes": len(text)}
    manifest = {"counts": {"train_rows": rows}, "outputs": outputs, "shards": {"train": names, "val": []}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    size = sum(o["bytes"] for o in outputs.values()) / 2**20
    for how in ("list", "stream"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, model, str(folder), how], capture_output=True, text=True
        )
        print(f"{how}: {rows} rows ({size:.1f} MB of JSONL): RSS +{float(out.stdout.split()[-1]):.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50_000)
