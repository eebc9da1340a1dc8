"""`manifest.json`: what went in (files with sha256), what happened (counts per stage, removal
reasons, skipped inputs, PII counts with masked examples, dedup samples), what came out (token statistics, file
checksums), how (the resolved config, tuneloop version) and a fingerprint of the outputs.

Nothing in it depends on time, engine or worker count, so it is byte-identical for the same input
and config, like the data files.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuneloop import __version__
from tuneloop.data.config import DataConfig
from tuneloop.data.stats import Stats

STAGES = ("read", "format", "clean", "quality", "pii", "dedup_exact", "dedup_near")


def token_stats(counts: Sequence[int] | np.ndarray | Mapping[int, int]) -> dict[str, Any]:
    """total, mean, p50, p95 (nearest rank: always a real row's count), max.

    `counts` is one count per row, or a histogram {token count: rows}: the engines pass histograms,
    so the driver holds one entry per distinct length, never one per row.
    """
    hist = _histogram(counts)
    values = np.array(sorted(hist), dtype=np.int64)
    freq = np.array([hist[v] for v in values.tolist()], dtype=np.int64)
    rows = int(freq.sum())
    if rows == 0:
        return {"rows": 0, "total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    cum = np.cumsum(freq)

    def rank(p: float) -> int:
        return int(values[np.searchsorted(cum, max(math.ceil(p * rows), 1))])

    total = int((values * freq).sum())
    return {
        "rows": rows,
        "total": total,
        "mean": round(total / rows, 2),
        "p50": rank(0.5),
        "p95": rank(0.95),
        "max": int(values[-1]),
    }


def _histogram(counts: Sequence[int] | np.ndarray | Mapping[int, int]) -> dict[int, int]:
    if isinstance(counts, Mapping):
        return {int(k): int(v) for k, v in counts.items() if v}
    values, freq = np.unique(np.asarray(counts, dtype=np.int64), return_counts=True)
    return dict(zip(values.tolist(), freq.tolist(), strict=True))


def merge_histograms(*hists: Mapping[int, int]) -> dict[int, int]:
    out: Counter[int] = Counter()
    for h in hists:
        out.update({int(k): int(v) for k, v in h.items()})
    return dict(out)


def fingerprint(outputs: dict[str, dict[str, Any]]) -> str:
    """sha256 over the names and checksums of the JSONL outputs (Parquet is derived from them)."""
    sha = hashlib.sha256()
    for name in sorted(outputs):
        if name.endswith(".jsonl"):
            sha.update(f"{name}:{outputs[name]['sha256']}\n".encode())
    return "sha256:" + sha.hexdigest()


def build_manifest(
    cfg: DataConfig,
    inputs: list[dict[str, Any]],
    stats: Stats,
    dedup: dict[str, Any],
    tokens: dict[str, dict[int, int]],
    split_docs: dict[str, int],
    outputs: dict[str, dict[str, Any]],
    tokenizer: str,
    counted: str,
) -> dict[str, Any]:
    skips = sorted(stats.skips, key=lambda s: (s.file, s.line or 0, s.reason))
    all_tokens = merge_histograms(tokens["train"], tokens["val"])
    shard_rows = {s: token_stats(tokens[s])["rows"] for s in ("train", "val")}
    return {
        "tuneloop_version": __version__,
        "kind": cfg.kind,
        "fingerprint": fingerprint(outputs),
        "inputs": inputs,
        "counts": {
            **{s: stats.counts.get(s, 0) for s in STAGES},
            "documents": sum(split_docs.values()),
            "train_documents": split_docs["train"],
            "val_documents": split_docs["val"],
            "train_rows": shard_rows["train"],
            "val_rows": shard_rows["val"],
        },
        "removed": dict(sorted(stats.removed.items())),
        "skipped": {"total": stats.skipped, "items": [s.to_json() for s in skips[: cfg.max_skips_listed]]},
        "pii": {"mode": cfg.pii.mode, **{k: stats.pii[k] for k in sorted(stats.pii)}},
        "pii_examples": pii_examples(stats, cfg.pii.examples),
        "dedup": dedup,
        "tokens": {
            "tokenizer": tokenizer,
            "counted": counted,
            **token_stats(all_tokens),
            "over_max_tokens": sum(n for t, n in all_tokens.items() if t > cfg.chunk.max_tokens),
            "train": token_stats(tokens["train"]),
            "val": token_stats(tokens["val"]),
        },
        "outputs": outputs,
        "shards": {
            s: sorted(
                (n for n in outputs if n.startswith(f"{s}/") and n.endswith(".jsonl")), key=_shard_number
            )
            for s in ("train", "val")
        },
        "config": cfg.model_dump(mode="json"),
    }


def _shard_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1].split(".", 1)[0])


def pii_examples(stats: Stats, k: int) -> dict[str, list[dict[str, str]]]:
    """Per type, the first `k` matches in document order, each as [TYPE:shape] in its (masked) context."""
    return {
        kind: [{"doc": doc_id, "context": context} for _, doc_id, context in items[:k]]
        for kind, items in sorted(stats.pii_examples.items())
    }


def summary_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, how many) lines for the end-of-run table: read, kept after each stage, removed by reason."""
    c = manifest["counts"]
    rows = [
        ("input files", str(len(manifest["inputs"]))),
        ("skipped inputs (file/line)", str(manifest["skipped"]["total"])),
    ]
    rows += [
        (f"kept after {stage}" if stage != "read" else "records read", str(c[stage])) for stage in STAGES
    ]
    rows += [(f"  removed: {reason}", str(n)) for reason, n in manifest["removed"].items()]
    rows += [(f"  PII found: {kind}", str(n)) for kind, n in manifest["pii"].items() if kind != "mode"]
    t = manifest["tokens"]
    rows += [
        ("documents train / val", f"{c['train_documents']} / {c['val_documents']}"),
        ("rows train / val", f"{c['train_rows']} / {c['val_rows']}"),
        ("tokens total", str(t["total"])),
        ("tokens mean / p50 / p95 / max", f"{t['mean']} / {t['p50']} / {t['p95']} / {t['max']}"),
    ]
    return rows
