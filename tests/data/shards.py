"""Reading a prepared dataset folder in tests: its shards, split by split, in order."""

from __future__ import annotations

import json
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
