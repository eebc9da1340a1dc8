"""Reading a prepared dataset folder in tests: its shards, split by split, in order."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def shards(out: Path, split: str, ext: str = "jsonl") -> list[Path]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return [out / Path(name).with_suffix(f".{ext}") for name in manifest["shards"][split]]


def split_text(out: Path, split: str) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in shards(out, split))


def split_rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in split_text(out, split).splitlines()]


def split_table(out: Path, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in shards(out, split, "parquet")])


def all_files(out: Path) -> dict[str, bytes]:
    """Every file of the dataset by relative path (nothing else may be left in the folder)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


_SYLLABLES = ("ka", "lo", "mi", "ren", "tos", "vel", "dra", "qu", "shi", "pan", "er", "zu", "bo", "lin", "fa")
VOCAB = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "n", "s")]


def prose(seed: int, sentences: int = 6) -> str:
    """Distinct, clean English-like text (passes the quality filters; no near-duplicates by chance)."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(8, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)
