"""Dataset files: `train.jsonl` / `val.jsonl` written in canonical order, then the same as Parquet.

Rows are serialized one way only (`dump_row`), so the local and Spark engines write identical bytes;
Parquet gets an explicit schema per kind so an empty split still has the right columns. Tool use
survives it: messages keep `tool_calls`, `tool_call_id` and `name`; an SFT row's `tools` (JSON schemas
of any shape, which no fixed Arrow type holds) is a JSON string column. Synthesized SFT rows
(`data synth`, kind "sft+source") also carry where they came from: `source`, a JSON string column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

SPLITS = ("train", "val")
_BATCH = 8192


def dump_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def schema(kind: str) -> pa.Schema:
    import pyarrow as pa

    function = pa.struct([("name", pa.string()), ("arguments", pa.string())])
    call = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", function)])
    message = [("role", pa.string()), ("content", pa.string())]
    messages = pa.list_(pa.struct(message))
    if kind == "pretrain":
        return pa.schema([("text", pa.string())])
    if kind in ("sft", "sft+source"):
        tool_fields = [("tool_calls", pa.list_(call)), ("tool_call_id", pa.string()), ("name", pa.string())]
        sft = [("messages", pa.list_(pa.struct(message + tool_fields))), ("tools", pa.string())]
        return pa.schema([*sft, ("source", pa.string())] if kind == "sft+source" else sft)
    return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages)])


def write_parquet(jsonl: Path, kind: str) -> Path:
    """Stream `x.jsonl` into `x.parquet` in batches (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = jsonl.with_suffix(".parquet")
    sch = schema(kind)
    if kind == "pretrain" and jsonl.stat().st_size and _write_parquet_arrow(jsonl, out, sch):
        return out
    with pq.ParquetWriter(out, sch, compression="zstd") as writer, jsonl.open(encoding="utf-8") as f:
        batch: list[dict[str, Any]] = []
        for line in f:
            batch.append(_parquet_row(json.loads(line)))
            if len(batch) == _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=sch))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=sch))
    return out


def _parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("tools", "source"):  # free-form JSON: a string column
        if row.get(key) is not None:
            row = {**row, key: dump_row(row[key])}
    return row


def _write_parquet_arrow(jsonl: Path, out: Path, sch: pa.Schema) -> bool:
    """`write_parquet` for {"text"} rows through Arrow's JSON reader: the same file, byte for byte
    (row groups of `_BATCH` rows, each one contiguous array), without a Python dict per row."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    if not hasattr(pj, "open_json"):  # pyarrow < 19
        return False
    try:
        reader = pj.open_json(
            jsonl,
            read_options=pj.ReadOptions(use_threads=False, block_size=1 << 22),
            parse_options=pj.ParseOptions(explicit_schema=sch, unexpected_field_behavior="error"),
        )
        with pq.ParquetWriter(out, sch, compression="zstd") as writer:
            pending: list[Any] = []
            rows = 0
            for batch in reader:
                pending.append(batch)
                rows += batch.num_rows
                while rows >= _BATCH:
                    table = pa.Table.from_batches(pending, schema=sch)
                    writer.write_table(table.slice(0, _BATCH).combine_chunks())
                    rest = table.slice(_BATCH)
                    pending, rows = rest.to_batches(), rest.num_rows
            if rows:
                writer.write_table(pa.Table.from_batches(pending, schema=sch).combine_chunks())
    except pa.ArrowException:
        return False  # the row-by-row writer below rewrites `out`
    return True


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
