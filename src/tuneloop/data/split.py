"""Train/validation split by document: all pieces of a document land on the same side.

Each document gets a seeded hash of its id; the `val_fraction` share with the smallest hashes goes to
validation. That is exact in size, reproducible, and independent of order, engine and workers.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


def split_key(seed: int, doc_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def val_count(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one validation and one training document when both are possible."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(round(n * fraction), 1), n - 1)


def choose_val(items: Iterable[tuple[int, Hashable]], fraction: float) -> set[Hashable]:
    """(split key, order) for every surviving document -> the orders that go to validation."""
    ranked = list(items)
    return smallest(ranked, val_count(len(ranked), fraction))


def smallest(items: Iterable[tuple[int, Hashable]], k: int) -> set[Hashable]:
    """The orders of the `k` smallest (split key, order) pairs (Spark: `takeOrdered(k)`, same result)."""
    return {order for _, order in heapq.nsmallest(k, items)}


@dataclass(frozen=True)
class ValCut:
    """The validation choice as a bound, not a set: a document is in validation when its
    (split key, order) is at most `cut`, the k-th smallest pair. Same documents as `smallest`, in
    O(1) memory, so a Spark driver does not hold 5 % of the corpus' orders."""

    cut: tuple[int, Hashable] | None  # None: no validation documents
    count: int

    def __len__(self) -> int:
        return self.count

    def holds(self, key: int, order: Hashable) -> bool:
        return self.cut is not None and (key, order) <= self.cut
