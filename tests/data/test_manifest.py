"""Manifest helpers: token statistics, fingerprints, bounded skip lists."""

from __future__ import annotations

from tuneloop.data.manifest import fingerprint, token_stats
from tuneloop.data.stats import SKIPS_KEPT, Stats


def test_token_stats_use_nearest_rank_percentiles() -> None:
    assert token_stats(list(range(1, 101))) == {
        "rows": 100,
        "total": 5050,
        "mean": 50.5,
        "p50": 50,
        "p95": 95,
        "max": 100,
    }
    assert token_stats([]) == {"rows": 0, "total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    assert token_stats([7])["p95"] == 7


def test_fingerprint_covers_jsonl_outputs_only() -> None:
    a = {"train.jsonl": {"sha256": "1"}, "val.jsonl": {"sha256": "2"}, "train.parquet": {"sha256": "x"}}
    b = {**a, "train.parquet": {"sha256": "y"}}
    c = {**a, "val.jsonl": {"sha256": "3"}}
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    assert fingerprint(a).startswith("sha256:")


def test_skips_are_all_counted_but_only_the_first_kept() -> None:
    stats = Stats()
    for line in range(SKIPS_KEPT + 500):
        stats.skip("big.jsonl", line + 1, "invalid JSON")
    merged = Stats().merge(Stats.from_json(stats.to_json()))
    assert merged.skipped == SKIPS_KEPT + 500 and len(merged.skips) == SKIPS_KEPT
    assert merged.skips[-1].line == SKIPS_KEPT
