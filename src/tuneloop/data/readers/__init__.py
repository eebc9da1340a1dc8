"""Readers: one input file in, `(line, record)` pairs out, with sha256 of the bytes and every problem reported.

A record is a string (a text/Markdown/HTML document) or a dict (a row of JSONL/JSON/CSV/Parquet).
Unreadable files, corrupt gzip, binary data, empty files and undecodable lines are skipped with the
file, the line and the reason; the reader never raises on bad data.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from tuneloop.data.config import InputConfig
from tuneloop.data.readers.documents import html_document, text_document
from tuneloop.data.readers.encoding import detect_encoding, looks_binary
from tuneloop.data.readers.records import csv_rows, json_rows, jsonl_rows, parquet_rows
from tuneloop.data.readers.source import HashingReader, InputFile, filesystem, list_inputs
from tuneloop.data.stats import Stats

__all__ = ["FileReader", "InputFile", "list_inputs"]
_BUF = 1 << 20


class FileReader:
    """Iterate one file's records; afterwards `sha256` and `nbytes` describe the raw bytes."""

    def __init__(self, file: InputFile, cfg: InputConfig, stats: Stats):
        self.file, self.cfg, self.stats = file, cfg, stats
        self.sha256 = ""
        self.nbytes = 0

    def skip(self, line: int | None, reason: str) -> None:
        self.stats.skip(self.file.name, line, reason)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        try:
            fs, path = filesystem(self.file.url, self.cfg)
            raw = fs.open(path, "rb")
        except OSError as e:
            self.skip(None, f"cannot open: {e}")
            return
        hashing = HashingReader(raw)
        try:
            if self.file.format is None:
                self.skip(None, "unsupported file type (not txt, md, html, jsonl, json, csv, parquet)")
            elif self.file.format == "parquet" and not self.file.gzip:
                yield from parquet_rows(raw, self.skip)
                raw.seek(0)  # Parquet reads by seeking; hash the whole file afterwards
            else:
                yield from self._parse(io.BufferedReader(hashing, _BUF))
        except (OSError, EOFError, zlib.error) as e:
            # gzip corruption surfaces in the middle of reading; keep what came before it
            self.skip(None, f"corrupt or truncated file: {e}")
        finally:
            self.sha256 = hashing.finish()
            self.nbytes = hashing.nbytes
            raw.close()

    def _parse(self, buffered: io.BufferedReader) -> Iterator[tuple[int, Any]]:
        stream = self._decompress(buffered)
        if stream is None:
            return
        sample = stream.peek(1 << 16)[: 1 << 16]
        if not sample:
            self.skip(None, "empty file")
            return
        if looks_binary(sample):
            self.skip(None, "binary file (NUL bytes), not text")
            return
        encoding = self.cfg.encoding or detect_encoding(sample)
        if encoding is None:
            self.skip(None, "unknown text encoding")
            return
        yield from self._dispatch(stream, encoding)

    def _decompress(self, buffered: io.BufferedReader) -> io.BufferedReader | None:
        is_gzip = buffered.peek(2)[:2] == b"\x1f\x8b"
        if self.file.gzip and not is_gzip:
            self.skip(None, "corrupt gzip: not gzip data")
            return None
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered), _BUF) if is_gzip else buffered

    def _dispatch(self, stream: BinaryIO, encoding: str) -> Iterator[tuple[int, Any]]:
        fmt = self.file.format
        if fmt == "text":
            yield from text_document(stream, encoding, self.skip)
        elif fmt == "html":
            yield from html_document(stream, encoding, self.skip, self.cfg.html_extractor)
        elif fmt == "jsonl":
            yield from jsonl_rows(stream, encoding, self.skip)
        elif fmt == "json":
            yield from json_rows(stream, encoding, self.skip)
        elif fmt == "csv":
            yield from csv_rows(stream, encoding, self.skip)
        else:  # gzipped parquet: needs random access, so read it into memory
            yield from parquet_rows(io.BytesIO(stream.read()), self.skip)
