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
        self.last_line = 0
        self.gzip_error: str | None = None

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
                for line, record in self._parse(io.BufferedReader(hashing, _BUF)):
                    self.last_line = line
                    yield line, record
                if self.gzip_error:
                    self.skip(
                        self.last_line + 1, f"corrupt or truncated gzip, rest of file lost: {self.gzip_error}"
                    )
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
            if not self.gzip_error:
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
        if not is_gzip:
            return buffered
        return io.BufferedReader(_TolerantGzip(gzip.GzipFile(fileobj=buffered), self), _BUF)

    def _dispatch(self, stream: BinaryIO, encoding: str) -> Iterator[tuple[int, Any]]:
        fmt = self.file.format
        if fmt == "text":
            yield from text_document(stream, encoding, self.skip, int(self.cfg.max_document_mb * 1_000_000))
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


class _TolerantGzip(io.RawIOBase):
    """Decompressed bytes until the data breaks; then end-of-file, with the error kept on the reader.

    Without this a truncated .gz loses everything already buffered; with it, every complete line
    before the damage is kept and the damage is reported once.
    """

    def __init__(self, inner: gzip.GzipFile, owner: FileReader):
        self.inner, self.owner = inner, owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.owner.gzip_error:
            return 0
        try:
            data = self.inner.read1(len(buffer))  # read1: one inflate step, so little is lost at the break
        except (OSError, EOFError, zlib.error) as e:
            self.owner.gzip_error = str(e) or type(e).__name__
            return 0
        buffer[: len(data)] = data
        return len(data)
