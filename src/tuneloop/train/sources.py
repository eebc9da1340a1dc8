"""Which datasets a run trains on, whether it streams them, and their rows checked up front.

data.path is one dataset; data.mix several, each with a weight (weights > 0, normalized to sum 1:
`0.7, 0.3` and `7, 3` mean the same; the normalized weights are logged and recorded). A streamed
dataset is checked up front on its first rows only (a bad row later stops training with an error
naming its shard and line); the in-memory path reads and checks every row before the model loads.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.layout import Split
from tuneloop.errors import TuneloopError
from tuneloop.train import distributed
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import dataset_files, read_rows
from tuneloop.train.distributed import Dist
from tuneloop.train.loader import LoadedMixture, Sources, data_workers
from tuneloop.train.mixture import Entry, Mixture
from tuneloop.train.streaming import RowFiles, ShardStream, Tokenizing, is_large

log = logging.getLogger("tuneloop.train")

CHECK_ROWS = 100  # rows of a streamed dataset checked before the model loads


@dataclass
class TrainData:
    """The training datasets (one per data.mix entry, or data.path alone) and the validation rows."""

    sources: list[Path | Split]
    entries: list[Entry]
    streamed: bool
    mixed: bool = False  # data.mix (even of one dataset)
    rows: list[dict[str, Any]] = field(default_factory=list)  # all training rows, when not streamed
    val_file: Path | Split | None = None
    val_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_file(self) -> Path | Split:
        return self.sources[0]

    def lineage(self, fingerprint: Any) -> dict[str, Any]:
        """run.json's `dataset`: the dataset and its fingerprint, or every mixed one with its weight."""
        if not self.mixed:
            return {"train": str(self.train_file), "fingerprint": fingerprint(self.train_file)}
        parts = [
            {"train": str(s), "fingerprint": fingerprint(s), "weight": e.weight}
            for s, e in zip(self.sources, self.entries, strict=True)
        ]
        joined = "\n".join(f"{p['fingerprint']} {p['weight']}" for p in parts)
        return {
            "train": ", ".join(p["train"] for p in parts),
            "fingerprint": "mix:sha256:" + hashlib.sha256(joined.encode()).hexdigest(),
            "mix": parts,
        }


def read(cfg: TrainConfig) -> TrainData:
    """The datasets of `cfg`, checked (every row, or a streamed dataset's first rows)."""
    d = cfg.data
    limit = d.max_train_examples
    if d.mix:
        sources = [_mix_source(i, m.path, d.val_path) for i, m in enumerate(d.mix)]
        total = sum(m.weight for m in d.mix)
        entries = [Entry(m.path, m.weight / total) for m in d.mix]
        if abs(total - 1.0) > 1e-9:
            log.info(
                "data.mix weights %s sum to %g: normalized to %s",
                [m.weight for m in d.mix],
                total,
                [round(e.weight, 6) for e in entries],
            )
        train = [s for s, _ in sources]
        val_file = _val(cfg, [v for _, v in sources])
        streamed = True
    else:
        assert d.path is not None  # the config requires path or mix
        first, val_file = dataset_files(d.path, d.val_path)
        train, entries = [first], [Entry(d.path, 1.0)]
        streamed = d.streaming is True or (
            d.streaming == "auto" and cfg.objective != "kto" and is_large(first, limit)
        )
    data = TrainData(train, entries, streamed, bool(d.mix), val_file=val_file)
    if streamed:
        for source in train:
            read_rows(source, cfg.objective, min(limit or CHECK_ROWS, CHECK_ROWS))
    else:
        data.rows = read_rows(train[0], cfg.objective, limit)
    if val_file is not None:
        data.val_rows = read_rows(val_file, cfg.objective, d.max_val_examples)
    return data


def _mix_source(i: int, path: str, val_path: str | None) -> tuple[Path | Split, Path | Split | None]:
    try:
        return dataset_files(path, val_path)
    except TuneloopError as e:
        raise TuneloopError(f"data.mix[{i}] (path '{path}'): {e.message}", hint=e.hint) from None


def _val(cfg: TrainConfig, vals: list[Path | Split | None]) -> Path | Split | None:
    """Validation of a mix: data.val_path, else the first mixed dataset's val split that exists."""
    found = [v for v in vals if v is not None]
    if len(found) > 1:
        log.info(
            "data.mix: validation on %s (the first dataset with a val split); set data.val_path to choose",
            found[0],
        )
    return found[0] if found else None


def open_stream(
    cfg: TrainConfig, data: TrainData, tokenizer: Any, dist: Dist, device: str
) -> Mixture | LoadedMixture:
    """This process's stream of the training examples, every dataset partitioned over the processes
    (and over its num_workers DataLoader workers, which then read and tokenize ahead: loader.py).

    The epoch length (for `epochs` and the lr schedule) is estimated from the row counts and the
    examples per row of each process's first window, averaged over the processes so all agree; it
    does not depend on num_workers."""
    how = Tokenizing(tokenizer, cfg.objective, cfg.data.max_length, cfg.data.overlong, cfg.data.packing)
    streams, estimate = [], 0.0
    for source in data.sources:
        files = RowFiles(source, cfg.data.max_train_examples)
        stream = ShardStream(files, how, cfg.seed, cfg.data.shuffle_buffer, dist.rank, dist.world)
        streams.append(stream)
        estimate += files.total() * stream.examples_per_row()
    estimate = distributed.sum_scalars([estimate], dist, device)[0] / dist.world
    workers = data_workers(cfg.num_workers, True, device)
    if workers >= 1:
        files = [s.files for s in streams]
        sources = Sources(files, how, cfg.seed, cfg.data.shuffle_buffer, data.entries)
        per_step = cfg.batch.global_batch // dist.world
        return LoadedMixture(sources, max(1, round(estimate)), dist.rank, dist.world, workers, per_step)
    return Mixture(streams, data.entries, max(1, round(estimate)))
