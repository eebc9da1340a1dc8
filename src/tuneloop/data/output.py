"""Dataset files: `train.jsonl` / `val.jsonl` written in canonical order, then the same as Parquet.

Rows are serialized one way only (`dump_row`), so the local and Spark engines write identical bytes;
Parquet gets an explicit schema per kind so an empty split still has the right columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPLITS = ("train", "val")
_BATCH = 8192


def dump_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def schema(kind: str) -> Any:
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if kind == "pretrain":
        return pa.schema([("text", pa.string())])
    if kind == "sft":
        return pa.schema([("messages", messages)])
    return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages)])


def write_parquet(jsonl: Path, kind: str) -> Path:
    """Stream `x.jsonl` into `x.parquet` in batches (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = jsonl.with_suffix(".parquet")
    sch = schema(kind)
    with pq.ParquetWriter(out, sch, compression="zstd") as writer, jsonl.open(encoding="utf-8") as f:
        batch: list[dict[str, Any]] = []
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=sch))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=sch))
    return out


def concat(parts: Iterable[Path], dest: Path) -> None:
    """Join part files in the given order (they are already in canonical order)."""
    with dest.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)


def describe(path: Path) -> dict[str, Any]:
    sha, rows = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            rows += chunk.count(b"\n")
    return {
        "sha256": sha.hexdigest(),
        "bytes": path.stat().st_size,
        "rows": rows if path.suffix == ".jsonl" else None,
    }
