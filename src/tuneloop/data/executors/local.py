"""Local engine: all cores through a process pool, streaming through shard files on disk.

Phase 1 runs one task per input file and writes its surviving documents plus their dedup keys to a
shard; phase 2 (in this process) makes the global dedup/split decisions from the keys only; phase 3
chunks each shard into part files; the parts, read in input order, are cut into the output shards
(`output.shard_rows` rows each, see `layout.py`). Memory holds one document per worker plus the
keys (~0.5 KB per document), never the corpus.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuneloop.data.chunk import Chunker, preload, tokenizer_path
from tuneloop.data.config import DataConfig
from tuneloop.data.dedup import MinHasher, bucket_edges, exact_duplicates
from tuneloop.data.destination import Destination, write_split
from tuneloop.data.document import Doc
from tuneloop.data.manifest import merge_histograms
from tuneloop.data.output import SPLITS
from tuneloop.data.pipeline import (
    Decision,
    Order,
    decide,
    final_rows_batch,
    finish,
    process_file,
    work_dir,
)
from tuneloop.data.readers import InputFile, list_inputs
from tuneloop.data.split import smallest
from tuneloop.data.stats import Stats
from tuneloop.errors import TuneloopError


def run_local(
    inputs: list[str],
    dest: Destination,
    cfg: DataConfig,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    try:
        return _run(inputs, dest, cfg, workers=workers, progress=progress)
    except BrokenProcessPool:
        raise TuneloopError(
            "a worker process died (killed for memory, or it could not start)",
            hint="retry with --workers 1; from Python, run prepare() from a script file, not stdin",
        ) from None


def _run(
    inputs: list[str],
    dest: Destination,
    cfg: DataConfig,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    files = list_inputs(inputs, cfg.input, exclude=dest.url if dest.local else None)
    tok_dir = tokenizer_path(cfg.tokenizer)
    work = work_dir(dest)
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    timings: dict[str, float] = {}
    if workers > 1:
        preload(tok_dir)  # forked workers inherit the loaded tokenizer instead of each loading it
    with _pool(workers) as pmap, _progress(progress) as bar:
        t = time.perf_counter()
        tasks = [(i, f, cfg, str(work)) for i, f in enumerate(files)]
        results = list(bar("read, clean, filter, PII, hash", pmap(_phase1, tasks), [f.size for f in files]))
        timings["read+clean+pii+minhash"] = time.perf_counter() - t
        t = time.perf_counter()
        stats = Stats()
        for r in results:
            stats.merge(Stats.from_json(r))
        decision = _decide(work, len(files), cfg, stats, pmap, workers)
        timings["dedup+split"] = time.perf_counter() - t
        t = time.perf_counter()
        tasks3 = [
            (i, _subset(decision.removed, i), _subset(decision.val, i), cfg, tok_dir, str(work))
            for i in range(len(files))
        ]
        parts = list(bar("chunk, tokenize, write", pmap(_phase3, tasks3), [r["kept"] + 1 for r in results]))
        timings["chunk+tokenize"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        manifest = _write(dest, work, parts, cfg, stats, decision)
    finally:
        _cleanup(work)
    timings["write"] = time.perf_counter() - t
    manifest["run"] = {
        "engine": "local",
        "workers": workers,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "bytes_read": stats.bytes_read,
    }
    return manifest


def _phase1(task: tuple[int, InputFile, DataConfig, str]) -> dict[str, Any]:
    idx, file, cfg, work = task
    stats = Stats()
    index, exact, split, sigs, ids = [], [], [], [], []
    with open(Path(work) / f"{idx:06d}.docs.jsonl", "w", encoding="utf-8") as f:
        for k in process_file(idx, file, cfg, stats):
            f.write(json.dumps(k.doc.to_json(), ensure_ascii=False) + "\n")
            index.append(k.doc.index)
            exact.append(k.exact)
            split.append(k.split)
            ids.append(k.doc.id)
            if k.sig is not None:
                sigs.append(k.sig)
    np.savez(
        Path(work) / f"{idx:06d}.keys.npz",
        index=np.array(index, dtype=np.int64),
        exact=np.array(exact, dtype=np.uint64),
        split=np.array(split, dtype=np.uint64),
        sigs=np.array(sigs, dtype=np.uint32).reshape(len(sigs), cfg.dedup.num_perm),
        ids=np.array(ids, dtype=str),
    )
    return {**stats.to_json(), "kept": len(index)}


def _decide(
    work: Path, n_files: int, cfg: DataConfig, stats: Stats, pmap: Callable = map, workers: int = 1
) -> Decision:
    keys = [np.load(work / f"{i:06d}.keys.npz") for i in range(n_files)]
    orders: list[Order] = [(i, int(x)) for i, k in enumerate(keys) for x in k["index"]]
    id_list = [str(x) for k in keys for x in k["ids"]]
    exact = np.concatenate([k["exact"] for k in keys]) if keys else np.zeros(0, np.uint64)
    split = np.concatenate([k["split"] for k in keys]) if keys else np.zeros(0, np.uint64)
    sigs = np.concatenate([k["sigs"] for k in keys]) if cfg.dedup.near and orders else None
    where = {o: n for n, o in enumerate(orders)}

    def near_edges(gone: set[Order]) -> list[tuple[Order, Order, float]]:
        alive = np.array([n for n, o in enumerate(orders) if o not in gone], dtype=np.int64)
        if sigs is None or not alive.size:
            return []
        if workers == 1:
            edges = _band_edges(sigs[alive], range(cfg.dedup.bands), cfg)
        else:  # the bands are independent: the workers verify a share each, reading the shards
            tasks = [
                (str(work), n_files, alive, range(w, cfg.dedup.bands, workers), cfg) for w in range(workers)
            ]
            edges = [e for part in pmap(_lsh_task, tasks) for e in part]
        return sorted({(orders[alive[a]], orders[alive[b]], sim) for a, b, sim in edges})

    def val_fn(gone: set[Order], k: int) -> set[Order]:
        return smallest(((int(split[n]), o) for n, o in enumerate(orders) if o not in gone), k)

    def exact_fn() -> dict[Order, tuple[Order, str, str]]:
        return exact_duplicates(zip(exact.tolist(), orders, id_list, strict=True))

    return decide(exact_fn, near_edges, val_fn, lambda os_: {o: id_list[where[o]] for o in os_}, cfg, stats)


def _lsh_task(task: tuple[str, int, np.ndarray, range, DataConfig]) -> list[tuple[int, int, float]]:
    work, n_files, alive, bands, cfg = task
    sigs = np.concatenate([np.load(Path(work) / f"{i:06d}.keys.npz")["sigs"] for i in range(n_files)])
    return _band_edges(sigs[alive], bands, cfg)


def _band_edges(live: np.ndarray, bands: range, cfg: DataConfig) -> list[tuple[int, int, float]]:
    """Candidate pairs from equal band keys (sorting, not a Python dict per band), verified on signatures.

    Rows of `live` are in canonical order; the edges are (row, earlier row, similarity).
    """
    keys = MinHasher(cfg.dedup).band_keys(live)
    groups: list[np.ndarray] = []
    for band in bands:
        col = keys[:, band]
        idx = np.argsort(col, kind="stable")  # stable: equal keys stay in canonical order
        sorted_keys = col[idx]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(idx)]
        multi = ends - starts > 1
        groups += [idx[s:e] for s, e in zip(starts[multi].tolist(), ends[multi].tolist(), strict=True)]
    return bucket_edges(groups, live, cfg.dedup.threshold)


def _subset(orders: dict[Order, Any] | set[Order], file: int) -> set[int]:
    return {i for f, i in orders if f == file}


def _phase3(task: tuple[int, set[int], set[int], DataConfig, str, str]) -> dict[str, Any]:
    idx, removed, val, cfg, tok_dir, work = task
    chunker = Chunker(tok_dir, cfg.chunk)
    tokens: dict[str, Counter[int]] = {s: Counter() for s in SPLITS}
    docs = dict.fromkeys(SPLITS, 0)
    paths = {s: Path(work) / f"{idx:06d}.{s}.jsonl" for s in SPLITS}
    source = Path(work) / f"{idx:06d}.docs.jsonl"
    with (
        paths["train"].open("w", encoding="utf-8") as tr,
        paths["val"].open("w", encoding="utf-8") as va,
        source.open(encoding="utf-8") as f,
    ):
        for batch in _batches(f, removed):
            for doc, rows in zip(batch, final_rows_batch(batch, chunker, cfg.kind), strict=True):
                split = "val" if doc.index in val else "train"
                docs[split] += 1
                out = va if split == "val" else tr
                for row, n in rows:
                    out.write(row + "\n")
                    tokens[split][n] += 1
    return {"tokens": tokens, "docs": docs}


def _batches(lines: Iterator[str], removed: set[int], size: int = 64) -> Iterator[list[Doc]]:
    """Surviving documents of a shard, a few at a time (the tokenizer is called once per batch)."""
    batch: list[Doc] = []
    for line in lines:
        doc = Doc.from_json(json.loads(line))
        if doc.index not in removed:
            batch.append(doc)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _write(
    dest: Destination,
    work: Path,
    parts: list[dict[str, Any]],
    cfg: DataConfig,
    stats: Stats,
    decision: Decision,
) -> dict[str, Any]:
    """The per-file parts, joined in input order, cut into shards of `output.shard_rows` rows."""
    outputs: dict[str, Any] = {}
    for split in SPLITS:
        lines = _lines([work / f"{i:06d}.{split}.jsonl" for i in range(len(parts))])
        outputs.update(write_split(dest, split, lines, cfg.output.shard_rows, cfg.kind, cfg.parquet))
    tokens = {s: merge_histograms(*(p["tokens"][s] for p in parts)) for s in SPLITS}
    return finish(dest, outputs, cfg, stats, decision, tokens)


def _lines(parts: list[Path]) -> Iterator[str]:
    for part in parts:
        with part.open(encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")


def _cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def _init_worker() -> None:
    # one process per core already: a Rust thread pool per process would oversubscribe (and make
    # "N workers" use more than N cores). RAYON_NUM_THREADS only counts before tokenizers' first use.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")


@contextmanager
def _pool(workers: int) -> Iterator[Callable]:
    if workers == 1:
        _init_worker()
        yield map
        return
    # fork starts a worker in milliseconds, with everything imported; spawn takes a second or so per
    # worker (interpreter, numpy, pydantic, tuneloop), which a run on two cores feels. But fork copies
    # a parent's threads broken (fsspec's event loop, for one), so a parent with threads gets spawn.
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (OOM kill, failed start)
    # raises BrokenProcessPool here instead of hanging the run forever.
    fork = "fork" in mp.get_all_start_methods() and threading.active_count() == 1
    ctx = mp.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        if fork:  # fork every worker now (a pool with fork starts them all at once), before the
            pool.submit(int).result()  # progress bar or the pool's own manager start threads
        yield lambda fn, tasks: pool.map(fn, tasks)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable]:
    """`bar(label, results, weights)`: a rich progress bar advancing by each task's weight."""
    if not enabled:
        yield lambda _label, results, _weights: results
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as prog:

        def bar(label: str, results: Iterator, weights: list[int]) -> Iterator:
            task = prog.add_task(label, total=max(sum(weights), 1))
            for w, r in zip(weights, results, strict=False):
                prog.advance(task, max(w, 1) if w else 1)
                yield r
            prog.update(task, completed=max(sum(weights), 1))

        yield bar
