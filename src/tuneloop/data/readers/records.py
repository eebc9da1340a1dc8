"""Parsers for files of many records: JSON Lines, JSON arrays, CSV and Parquet.

Each yields `(line, record)`; a bad line is reported through `skip(line, reason)` and reading goes
on with the next one. Line numbers are 1-based (Parquet and JSON arrays: the row number).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

SkipFn = Callable[[int | None, str], None]
Record = tuple[int, Any]

csv.field_size_limit(sys.maxsize)


def jsonl_rows(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[Record]:
    for n, text in _lines(stream, encoding, skip):
        if not text.strip():
            continue  # blank lines separate nothing and hold nothing
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            skip(n, f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        yield n, row


def json_rows(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[Record]:
    data = stream.read()
    try:
        value = json.loads(data.decode(encoding))
    except UnicodeDecodeError as e:
        skip(data[: e.start].count(b"\n") + 1, f"cannot decode as {encoding}: {e.reason}")
        return
    except json.JSONDecodeError as e:
        skip(e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")
        return
    if isinstance(value, dict):
        # {"data": [...]} style wrappers: the one list of objects is the dataset
        lists = [
            v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        value = lists[0] if len(lists) == 1 else [value]
    if not isinstance(value, list):
        skip(1, f"top-level JSON is a {type(value).__name__}, not a list of records")
        return
    yield from enumerate(value, 1)


def csv_rows(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[Record]:
    text = io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline="")
    reader = csv.DictReader(text)
    try:
        for row in reader:
            if None in row:
                skip(reader.line_num, "row has more fields than the header")
                continue
            yield reader.line_num, dict(row)
    except (UnicodeDecodeError, csv.Error) as e:
        skip(reader.line_num + 1, f"unreadable CSV, rest of file skipped: {e}")
    finally:
        text.detach()


def parquet_rows(handle: BinaryIO, skip: SkipFn) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as e:
        skip(n + 1 if n else None, f"corrupt Parquet: {e}")


def _lines(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[tuple[int, str]]:
    """Decoded lines; a line that does not decode is skipped alone, not the whole file."""
    if encoding.startswith(("utf-16", "utf-32")):
        yield from _wide_lines(stream, encoding, skip)
        return
    line_enc = "utf-8" if encoding == "utf-8-sig" else encoding
    for n, raw in enumerate(stream, 1):
        if n == 1 and encoding == "utf-8-sig":
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            yield n, raw.decode(line_enc)
        except UnicodeDecodeError as e:
            skip(n, f"cannot decode as {encoding}: {e.reason} at byte {e.start}")


def _wide_lines(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[tuple[int, str]]:
    # UTF-16/32 have NUL bytes inside newlines, so only a text wrapper can split them
    text = io.TextIOWrapper(stream, encoding=encoding, errors="strict")
    n = 0
    try:
        for n, line in enumerate(text, 1):
            yield n, line
    except UnicodeDecodeError as e:
        skip(n + 1, f"cannot decode as {encoding}, rest of file skipped: {e.reason}")
    finally:
        text.detach()
