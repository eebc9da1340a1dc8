"""Spark engine: the same pipeline functions as the local engine, moved by RDD operations.

Per-file steps run in `flatMap` (one partition per input file); exact duplicates are found by
grouping on the hash, near-duplicates by grouping on (band, band key) across the whole dataset,
never per partition. The driver only sees counts, duplicate pairs, the validation cut (one pair)
and token histograms; the executors write the shards straight to the output (a folder or any fsspec
URL), cut at the same row indices as the local engine's, so the files are byte-identical to its.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.data.chunk import Chunker, tokenizer_path
from tuneloop.data.config import DataConfig
from tuneloop.data.dedup import MinHasher, group_edges
from tuneloop.data.destination import Destination
from tuneloop.data.document import Doc
from tuneloop.data.manifest import merge_histograms
from tuneloop.data.output import SPLITS
from tuneloop.data.pipeline import Decision, Order, decide, final_rows, finish, process_file
from tuneloop.data.readers import InputFile, list_inputs
from tuneloop.data.split import ValCut
from tuneloop.data.stats import Stats
from tuneloop.errors import missing_extra

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

_SESSIONS: dict[str, SparkContext] = {}


def spark_context(master: str, progress: bool = False) -> SparkContext:
    """One SparkContext per master for the life of the process (tests reuse it)."""
    try:
        from pyspark import SparkConf, SparkContext
    except ImportError:
        raise missing_extra("pyspark", "spark") from None
    if master not in _SESSIONS:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf = (
            SparkConf()
            .setMaster(master)
            .setAppName("tuneloop-data")
            .set("spark.ui.enabled", "false")
            .set("spark.driver.memory", "2g")
            .set("spark.python.worker.reuse", "true")
        )
        _SESSIONS[master] = SparkContext.getOrCreate(conf)
        _SESSIONS[master].setLogLevel("ERROR")
    return _SESSIONS[master]


def run_spark(
    inputs: list[str], dest: Destination, cfg: DataConfig, *, master: str = "local[*]", progress: bool = False
) -> dict[str, Any]:
    files = list_inputs(inputs, cfg.input, exclude=dest.url if dest.local else None)
    tok_dir = tokenizer_path(cfg.tokenizer)
    sc = spark_context(master, progress)
    from pyspark import StorageLevel

    timings: dict[str, float] = {}
    t = time.perf_counter()
    tagged = (
        sc.parallelize(list(enumerate(files)), max(len(files), 1))
        .flatMap(lambda t: _phase1(t[0], t[1], cfg))
        .persist(StorageLevel.MEMORY_AND_DISK)  # spill rather than re-read and re-hash the inputs
    )
    stats = Stats()
    for s in tagged.filter(lambda r: r[0] == "stats").map(lambda r: r[1]).collect():
        stats.merge(Stats.from_json(s))
    docs = tagged.filter(lambda r: r[0] == "doc").map(lambda r: r[1]).persist(StorageLevel.MEMORY_AND_DISK)
    timings["read+clean+pii+minhash"] = time.perf_counter() - t
    t = time.perf_counter()
    decision = _decide(sc, docs, cfg, stats)
    timings["dedup+split"] = time.perf_counter() - t
    t = time.perf_counter()
    outputs, tokens = _write_rows(sc, docs, decision, cfg, tok_dir, dest)
    timings["chunk+tokenize+write"] = time.perf_counter() - t
    t = time.perf_counter()
    tagged.unpersist()
    docs.unpersist()
    manifest = finish(dest, outputs, cfg, stats, decision, tokens)
    timings["commit"] = time.perf_counter() - t
    manifest["run"] = {
        "engine": "spark",
        "master": master,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "bytes_read": stats.bytes_read,
    }
    return manifest


def _phase1(idx: int, file: InputFile, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    stats = Stats()
    for k in process_file(idx, file, cfg, stats):
        sig = k.sig.tobytes() if k.sig is not None else b""
        yield "doc", (k.doc.order, k.doc.id, k.doc.row, k.exact, sig, k.split)
    yield "stats", stats.to_json()


def _decide(sc: SparkContext, docs: RDD, cfg: DataConfig, stats: Stats) -> Decision:
    """Only duplicates, LSH edges and the k validation orders come back to the driver: O(dups + k), not O(docs)."""

    def exact_fn() -> dict[Order, tuple[Order, str, str]]:
        groups = docs.map(lambda d: (d[3], (d[0], d[1]))).groupByKey().filter(lambda kv: len(kv[1]) > 1)
        return dict(groups.flatMap(lambda kv: _exact_pairs(kv[1])).collect())

    def near_edges(gone: set[Order]) -> list[tuple[Order, Order, float]]:
        bgone = sc.broadcast(gone)
        return _lsh_edges(docs.filter(lambda d: d[0] not in bgone.value), cfg)

    def val_fn(gone: set[Order], k: int) -> ValCut:
        """The k-th smallest (split key, order) of the survivors: one pair reaches the driver."""
        if not k:
            return ValCut(None, 0)
        bgone = sc.broadcast(gone)
        alive = docs.filter(lambda d: d[0] not in bgone.value).map(lambda d: (d[5], d[0]))
        ranked = alive.sortBy(lambda pair: pair).zipWithIndex()
        ((cut, _),) = ranked.filter(lambda pair_rank: pair_rank[1] == k - 1).collect()
        return ValCut(cut, k)

    def ids(orders: set[Order]) -> dict[Order, str]:
        return dict(docs.filter(lambda d: d[0] in orders).map(lambda d: (d[0], d[1])).collect())

    return decide(exact_fn, near_edges, val_fn, ids, cfg, stats)


def _exact_pairs(members: Any) -> list[tuple[Order, tuple[Order, str, str]]]:
    """Same rule as `dedup.exact_duplicates`: the first in canonical order is kept."""
    (kept, kept_id), *rest = sorted(members)
    return [(order, (kept, doc_id, kept_id)) for order, doc_id in rest]


def _lsh_edges(docs: RDD, cfg: DataConfig) -> list[tuple[Order, Order, float]]:
    dcfg, threshold = cfg.dedup, cfg.dedup.threshold

    def bands(d: tuple) -> list[tuple[tuple[int, int], tuple[Order, bytes]]]:
        sig = np.frombuffer(d[4], dtype=np.uint32)
        keys = MinHasher(dcfg).band_keys(sig[None, :])[0]
        return [((b, int(k)), (d[0], d[4])) for b, k in enumerate(keys)]

    def edges(members: Any) -> list[tuple[Order, Order, float]]:
        ordered = sorted(members)
        return group_edges([(o, np.frombuffer(s, dtype=np.uint32)) for o, s in ordered], threshold)

    grouped = docs.flatMap(bands).groupByKey().filter(lambda kv: len(kv[1]) > 1)
    return sorted(set(grouped.flatMap(lambda kv: edges(kv[1])).collect()))


def _write_rows(
    sc: SparkContext, docs: RDD, decision: Decision, cfg: DataConfig, tok_dir: str, dest: Destination
) -> tuple[dict[str, Any], dict[str, dict[int, int]]]:
    """Chunk, then write every shard from the executors straight to `dest`; returns the shards'
    `outputs` entries and a token histogram per split (no rows reach the driver).

    Partition i of `docs` holds the documents of a contiguous run of input files in canonical
    order, so the driver only needs each partition's row count per split to give every row its
    global index; one shuffle then brings shard k's rows (indices [k * shard_rows, ...)) together.
    """
    from pyspark import StorageLevel

    removed, val = sc.broadcast(set(decision.removed)), sc.broadcast(decision.val)
    chunk_cfg, kind, shard_rows = cfg.chunk, cfg.kind, cfg.output.shard_rows

    def rows(part: Iterator[tuple]) -> Iterator[tuple[str, str, int]]:
        chunker = Chunker(tok_dir, chunk_cfg)
        for d in part:
            if d[0] in removed.value:
                continue
            split = "val" if val.value.holds(d[5], d[0]) else "train"
            for line, n in final_rows(Doc(d[0][0], d[0][1], d[1], d[2]), chunker, kind):
                yield split, line, n

    chunked = docs.mapPartitions(rows).persist(StorageLevel.MEMORY_AND_DISK)
    counts = sorted(chunked.mapPartitionsWithIndex(_count).collect())
    offsets, totals = _offsets(counts)
    tokens = {s: merge_histograms(*(c[2][s] for c in counts)) for s in SPLITS}
    shards = {s: max(1, -(-totals[s] // shard_rows)) for s in SPLITS}
    base = {"train": 0, "val": shards["train"]}
    b_offsets = sc.broadcast(offsets)

    def index(i: int, part: Iterator[tuple[str, str, int]]) -> Iterator[tuple[tuple[int, int], str]]:
        pos = dict(b_offsets.value[i])
        for split, line, _ in part:
            g, pos[split] = pos[split], pos[split] + 1
            yield (base[split] + g // shard_rows, g), line

    def write(pid: int, part: Iterator[tuple[tuple[int, int], str]]) -> Iterator[dict[str, Any]]:
        split = "train" if pid < base["val"] else "val"
        yield dest.write_shard(split, pid - base[split], (line for _, line in part), kind, cfg.parquet)

    n_parts = shards["train"] + shards["val"]
    placed = chunked.mapPartitionsWithIndex(index).repartitionAndSortWithinPartitions(
        n_parts, partitionFunc=lambda key: key[0]
    )
    outputs: dict[str, Any] = {}
    for written in placed.mapPartitionsWithIndex(write).collect():
        outputs.update(written)
    chunked.unpersist()
    return outputs, tokens


def _count(i: int, part: Iterator[tuple[str, str, int]]) -> Iterator[tuple[int, dict, dict]]:
    rows = dict.fromkeys(SPLITS, 0)
    hist: dict[str, Counter[int]] = {s: Counter() for s in SPLITS}
    for split, _, n in part:
        rows[split] += 1
        hist[split][n] += 1
    yield i, rows, {s: dict(h) for s, h in hist.items()}


def _offsets(counts: list[tuple[int, dict, dict]]) -> tuple[dict[int, dict[str, int]], dict[str, int]]:
    """Each partition's first global row index per split, and the split totals."""
    running = dict.fromkeys(SPLITS, 0)
    offsets = {}
    for i, rows, _ in counts:
        offsets[i] = dict(running)
        for s in SPLITS:
            running[s] += rows[s]
    return offsets, running
