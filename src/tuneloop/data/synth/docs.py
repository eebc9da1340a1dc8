"""Documents in, chunks out: the data pipeline's readers (txt, md, html, jsonl, csv, parquet, gzip,
s3://) and its token-aware chunker, then exact duplicates dropped (a copied page must not be asked
twice). An empty or unreadable docs folder is an error naming it, never an empty dataset."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.chunk import Chunker, tokenizer_path
from tuneloop.data.config import ChunkConfig, InputConfig
from tuneloop.data.dedup import normalize
from tuneloop.data.formats import FormatError, to_row
from tuneloop.data.pii import redact
from tuneloop.data.readers import FileReader, list_inputs
from tuneloop.data.stats import Stats
from tuneloop.data.synth.prompts import language
from tuneloop.errors import TuneloopError

MIN_CHARS = 40  # a chunk shorter than this (a heading, a signature) has nothing to ask about


@dataclass(frozen=True)
class Chunk:
    doc: str  # the input file (with the record's line for JSONL/CSV rows)
    index: int  # the chunk's number inside its document
    text: str
    lang: str

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.index}"

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass
class Corpus:
    chunks: list[Chunk]
    inputs: list[dict[str, Any]]  # per file: path, sha256, bytes, documents
    stats: Stats
    dropped: dict[str, int] = field(default_factory=dict)  # chunk-level: too_short, duplicate_chunk
    pii: dict[str, int] = field(default_factory=dict)  # type -> items redacted


def read_chunks(
    paths: list[str],
    chunk_tokens: int,
    tokenizer: str,
    exclude: str | os.PathLike | None = None,
    pii: bool = True,
) -> Corpus:
    """The chunks of every document under `paths` (the output folder `exclude` left out, so
    `synth docs --out docs/qa` does not read its own rows on a rerun)."""
    for raw in paths:
        _check_folder(raw)
    stats = Stats()
    files = list_inputs(paths, InputConfig(), exclude=exclude)
    docs: list[tuple[str, str]] = []
    inputs = []
    found: list[tuple[str, str]] = []
    for file in files:
        reader = FileReader(file, InputConfig(), stats)
        before = len(docs)
        for line, record in reader:
            try:
                text = to_row(record, "pretrain", chat_to_text=True)["text"]
            except FormatError as e:
                stats.skip(file.name, line, str(e))
                continue
            name = file.name if file.format in ("text", "html") else f"{file.name}:{line}"
            docs.append((name, redact(text, found=found) if pii else text))
        inputs.append(
            {
                "path": file.name,
                "sha256": reader.sha256,
                "bytes": reader.nbytes,
                "documents": len(docs) - before,
            }
        )
    chunker = Chunker(tokenizer_path(tokenizer), ChunkConfig(max_tokens=chunk_tokens))
    corpus = Corpus([], inputs, stats, pii=dict(sorted(Counter(kind for kind, _ in found).items())))
    seen: set[str] = set()
    for (name, _), pieces in zip(docs, chunker.chunks_batch([t for _, t in docs]), strict=True):
        for index, (text, _) in enumerate(pieces):
            key = normalize(text)
            why = "too_short" if len("".join(text.split())) < MIN_CHARS else None
            why = why or ("duplicate_chunk" if key in seen else None)
            if why:
                corpus.dropped[why] = corpus.dropped.get(why, 0) + 1
                continue
            seen.add(key)
            corpus.chunks.append(Chunk(name, index, text.strip(), language(text)))
    if not corpus.chunks:
        raise _nothing(paths, stats, len(files))
    return corpus


def _check_folder(raw: str) -> None:
    """A local docs folder that is missing, empty or unreadable, named before anything loads."""
    if "://" in raw or any(c in raw for c in "*?["):
        return
    if not os.path.exists(raw):
        raise TuneloopError(
            f"docs '{raw}' does not exist", hint="pass the folder (or files) of your documents"
        )
    if not os.path.isdir(raw):
        if not os.access(raw, os.R_OK):
            raise TuneloopError(f"docs file '{raw}' cannot be read (permission denied)")
        return
    try:
        entries = [e for e in os.scandir(raw) if not e.name.startswith(".")]
    except OSError as e:
        raise TuneloopError(
            f"docs folder '{raw}' cannot be read: {e.strerror or e}", hint="check its permissions"
        ) from None
    if not entries:
        raise TuneloopError(
            f"docs folder '{raw}' is empty",
            hint="put your documents (md, txt, html, jsonl, csv, parquet) in it",
        )


def _nothing(paths: list[str], stats: Stats, n_files: int) -> TuneloopError:
    where = ", ".join(f"'{p}'" for p in paths)
    skips = "; ".join(f"{s.file}: {s.reason}" for s in stats.skips[:5])
    return TuneloopError(
        f"no text to ask about in {where}: {n_files} file(s), no chunk of {MIN_CHARS}+ characters"
        + (f" (skipped {skips})" if skips else ""),
        hint="pass readable txt, md, html, jsonl, csv or parquet documents",
    )
