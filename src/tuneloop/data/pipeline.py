"""The pipeline, engine-neutral: what happens to one file, one document, and the global decisions.

    read -> format -> clean -> quality -> pii   (per file, in parallel: `process_file`)
    exact dedup -> near dedup -> choose val      (global: `decide`)
    chunk / count tokens -> rows                 (per document, in parallel: `final_rows`)
    write shards (jsonl + parquet), manifest last (`destination.py`, `finish`)

The executors (`executors/local.py`, `executors/spark.py`) only move data between these functions,
so both engines produce the same dataset by construction (and a test checks it); `run.prepare`
picks one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data.chat_tokens import counted_as
from tuneloop.data.chunk import Chunker, tokenizer_path
from tuneloop.data.clean import Cleaner, QualityFilter
from tuneloop.data.config import DataConfig
from tuneloop.data.dedup import MinHasher, exact_hash, normalize, resolve_clusters
from tuneloop.data.destination import Destination
from tuneloop.data.document import Doc
from tuneloop.data.formats import FormatError, to_row
from tuneloop.data.manifest import build_manifest
from tuneloop.data.output import dump_row
from tuneloop.data.pii import PIIStep
from tuneloop.data.readers import FileReader, InputFile
from tuneloop.data.split import ValCut, split_key, val_count
from tuneloop.data.stats import Stats
from tuneloop.errors import TuneloopError

log = logging.getLogger("tuneloop.data")
Order = tuple[int, int]


@dataclass(slots=True)
class Keyed:
    """A document after the per-file steps, with everything the global decisions need."""

    doc: Doc
    exact: int
    sig: np.ndarray | None
    split: int


def process_file(idx: int, file: InputFile, cfg: DataConfig, stats: Stats) -> Iterator[Keyed]:
    """Read one file and run the per-document steps; its input entry lands in `stats.inputs`."""
    reader = FileReader(file, cfg.input, stats)
    counter = {"records": 0}
    docs: Iterable[Doc] = _formatted(idx, file, reader, cfg, stats, counter)
    for step in (
        Cleaner(cfg.clean),
        QualityFilter(cfg.quality, chat=cfg.kind != "pretrain"),
        PIIStep(cfg.pii),
    ):
        docs = step(docs, stats)
    hasher = MinHasher(cfg.dedup) if cfg.dedup.near else None
    kept = 0
    for batch in _batched(docs, 64):  # MinHash signatures are computed a batch at a time
        views = [doc.dedup_view() for doc in batch]
        norms = [normalize(view) for view in views]  # shared by both hashes
        sigs = hasher.signatures(norms) if hasher else [None] * len(batch)
        for doc, view, norm, sig in zip(batch, views, norms, sigs, strict=True):
            kept += 1
            yield Keyed(doc, exact_hash(view, norm), sig, split_key(cfg.split.seed, doc.id))
    stats.bytes_read += reader.nbytes
    fmt = (file.format or "unsupported") + (".gz" if file.gzip else "")
    stats.inputs.append(
        {
            "path": file.name,
            "sha256": reader.sha256,
            "bytes": reader.nbytes,
            "format": fmt,
            "records": counter["records"],
            "documents": kept,
        }
    )


def _batched(items: Iterable[Doc], size: int) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _formatted(
    idx: int, file: InputFile, reader: FileReader, cfg: DataConfig, stats: Stats, counter: dict[str, int]
) -> Iterator[Doc]:
    for n, (line, record) in enumerate(reader):
        counter["records"] += 1
        stats.counts["read"] += 1
        try:
            row = to_row(record, cfg.kind, cfg.input.text_field, cfg.input.chat_to_text)
        except FormatError as e:
            stats.drop(f"format.{e.code}")
            stats.skip(file.name, line, f"wrong shape for {cfg.kind}: {e}")
            continue
        stats.counts["format"] += 1
        yield Doc(idx, n, f"{file.name}:{line}", row)


@dataclass
class Decision:
    """The global outcome: which documents go (and why), which go to validation, dedup samples."""

    removed: dict[Order, str] = field(default_factory=dict)
    val: set[Order] | ValCut = field(default_factory=set)  # Spark: a bound on (split key, order)
    kept: int = 0  # documents left after dedup
    info: dict[str, Any] = field(default_factory=dict)


def decide(
    exact_fn: Callable[[], dict[Order, tuple[Order, str, str]]],
    near_edges: Callable[[set[Order]], list[tuple[Order, Order, float]]],
    val_fn: Callable[[set[Order], int], set[Order] | ValCut],
    ids: Callable[[set[Order]], dict[Order, str]],
    cfg: DataConfig,
    stats: Stats,
) -> Decision:
    """Exact dedup, then near dedup among the survivors, then the validation choice among what is left.

    The executor supplies the data-parallel parts (finding exact pairs, LSH edges, the k smallest
    split keys); the rules that decide what is kept live here, once.
    """
    d = Decision()
    n_docs = stats.counts["pii"]  # documents that reached dedup
    exact = exact_fn() if cfg.dedup.exact else {}
    d.removed.update(dict.fromkeys(exact, "dedup.exact"))
    if exact:
        stats.drop("dedup.exact", len(exact))
    stats.counts["dedup_exact"] = n_docs - len(exact)
    near = resolve_clusters(near_edges(set(exact))) if cfg.dedup.near else {}
    d.removed.update(dict.fromkeys(near, "dedup.near"))
    if near:
        stats.drop("dedup.near", len(near))
    stats.counts["dedup_near"] = d.kept = stats.counts["dedup_exact"] - len(near)
    d.val = val_fn(set(d.removed), val_count(d.kept, cfg.split.val_fraction))
    d.info = _dedup_info(exact, near, ids, cfg)
    require_documents(d.kept, stats)
    return d


def require_documents(kept: int, stats: Stats) -> None:
    """No dataset at all is an error, never an empty dataset that looks complete (nothing is written).

    Empty or unreadable inputs are named with why; inputs that had records but lost all of them
    get the removal reasons, so the user sees which filter (or --kind) to change.
    """
    if kept:
        return
    skips = "; ".join(f"{s.file}{f':{s.line}' if s.line else ''}: {s.reason}" for s in stats.skips[:5])
    more = f"; ... {stats.skipped - 5} more" if stats.skipped > 5 else ""
    if not stats.counts["read"]:
        names = ", ".join(sorted(i["path"] for i in stats.inputs)[:5]) or "(no input files)"
        raise TuneloopError(
            "nothing to prepare: no records read from " + (f"{skips}{more}" if skips else names),
            hint="pass non-empty txt, md, html, jsonl, json, csv or parquet files; nothing was written",
        )
    reasons = ", ".join(f"{why}: {n}" for why, n in stats.removed.most_common(8)) or "none recorded"
    raise TuneloopError(
        f"every document was removed: {stats.counts['read']} records read, none left "
        f"(removed by {reasons})" + (f"; skipped {skips}{more}" if skips else ""),
        hint="rows of the wrong shape for --kind are removed as format.*; quality.* settings and "
        "dedup can be loosened with key=value overrides; nothing was written",
    )


def _dedup_info(
    exact: dict[Order, tuple], near: dict[Order, tuple[Order, float]], ids: Callable, cfg: DataConfig
) -> dict[str, Any]:
    k = cfg.dedup.sample_pairs
    exact_pairs = [{"removed": rid, "kept": kid} for _, (_, rid, kid) in sorted(exact.items())[:k]]
    sample = sorted(near.items())[:k]
    names = ids({o for o, _ in sample} | {kept for _, (kept, _) in sample})
    near_pairs = [{"removed": names[o], "kept": names[kept], "similarity": sim} for o, (kept, sim) in sample]
    return {
        "exact": {"removed": len(exact), "pairs": exact_pairs},
        "near": {
            "removed": len(near),
            "threshold": cfg.dedup.threshold,
            "num_perm": cfg.dedup.num_perm,
            "bands": cfg.dedup.bands,
            "shingle_size": cfg.dedup.shingle_size,
            "pairs": near_pairs,
        },
    }


def final_rows(doc: Doc, chunker: Chunker, kind: str) -> list[tuple[str, int]]:
    """(JSON line, token count) for each output row of a surviving document."""
    return final_rows_batch([doc], chunker, kind)[0]


def final_rows_batch(docs: list[Doc], chunker: Chunker, kind: str) -> list[list[tuple[str, int]]]:
    """`final_rows` of each document; pretraining text is tokenized in batches."""
    if kind == "pretrain":
        chunked = chunker.chunks_batch([doc.row["text"] for doc in docs])
        return [[(dump_row({"text": text}), n) for text, n in pieces] for pieces in chunked]
    return [[(dump_row(doc.row), chunker.chat.count(doc.row))] for doc in docs]


def finish(
    dest: Destination,
    outputs: dict[str, dict[str, Any]],
    cfg: DataConfig,
    stats: Stats,
    decision: Decision,
    tokens: dict[str, dict[int, int]],
) -> dict[str, Any]:
    """The manifest for the shards already written under `dest`'s temporary prefix, then the commit
    (shards into place, manifest last). `tokens` is a histogram {token count: rows} per split."""
    inputs = sorted(stats.inputs, key=lambda i: i["path"])
    split_docs = {"train": decision.kept - len(decision.val), "val": len(decision.val)}
    counted = counted_as(cfg.kind, tokenizer_path(cfg.tokenizer))
    outputs = dict(sorted(outputs.items()))
    manifest = build_manifest(
        cfg, inputs, stats, decision.info, tokens, split_docs, outputs, cfg.tokenizer, counted
    )
    dest.commit(manifest)
    for skip in sorted(stats.skips, key=lambda s: (s.file, s.line or 0))[:20]:
        log.warning("skipped %s%s: %s", skip.file, f":{skip.line}" if skip.line else "", skip.reason)
    if stats.skipped > 20:
        log.warning("... and %d more skipped inputs, see manifest.json", stats.skipped - 20)
    return manifest


def work_dir(dest: Destination) -> Path:
    """A local scratch folder for the local engine's intermediate files: inside a local output
    folder (same disk as the result), else in the system's temporary folder."""
    if dest.local:
        work = Path(dest.fs()[1]) / dest.tmp / "work"
        work.mkdir(parents=True, exist_ok=True)
        return work
    return Path(tempfile.mkdtemp(prefix="tuneloop-work-"))
