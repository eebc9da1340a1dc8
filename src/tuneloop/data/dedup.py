"""Deduplication across the whole dataset: exact (hash of normalized text) and near (MinHash + LSH).

Documents are compared on normalized text (NFKC, lower case, punctuation and spacing removed), so
copies that differ in formatting count as copies. MinHash shingles are character n-grams, which
work for Chinese and Japanese as well as for English (no word splitting). The first document in the
canonical order (input file, record) is kept, so the result does not depend on engine or workers.

The decisions are pure functions over (order, hash/signature) items: the local engine feeds them
from shard files, the Spark engine from `groupByKey`, and both get the same answer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from tuneloop.data.config import DedupConfig

_WORDS = re.compile(r"[^\W_]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PROBES = 64  # densification probes per empty bin before falling back to the next filled bin
_GROUP_CHARS = 32_768  # characters hashed per batch of `MinHasher.signatures`


# ASCII: letters and digits kept, everything else a separator (what _WORDS finds in ASCII text)
_ASCII_WORDS = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + b" " * 128
_FULLWIDTH = re.compile("[\u3000\uff01-\uff5e]")  # ideographic space, full-width ASCII: common in CJK text
_FULLWIDTH_NFKC = {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in (0x3000, *range(0xFF01, 0xFF5F))}


def normalize(text: str) -> str:
    if text.isascii():  # NFKC leaves ASCII alone
        return " ".join(text.lower().encode("ascii").translate(_ASCII_WORDS).decode("ascii").split())
    return " ".join(_WORDS.findall(nfkc(text).lower()))


def nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), fast for the usual CJK text.

    Full NFKC costs ~200 ns a character once a text fails the quick check, and one full-width
    comma fails it. Replacing full-width characters by their NFKC forms first leaves NFKD, hence
    NFKC, unchanged (each is a starter that decomposes to its replacement); if what remains passes
    the quick check, it is the answer.
    """
    if unicodedata.is_normalized("NFKC", text):
        return text
    found = set(_FULLWIDTH.findall(text))
    if found:
        short = text
        for c in found:
            short = short.replace(c, _FULLWIDTH_NFKC[c])
        if unicodedata.is_normalized("NFKC", short):
            return short
    return unicodedata.normalize("NFKC", text)


def exact_hash(text: str, normalized: str | None = None) -> int:
    key = (normalize(text) if normalized is None else normalized).replace(" ", "")
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash signatures of a text's character shingles: one-permutation MinHash with densification.

    One 64-bit hash per shingle; the hash range is cut into `num_perm` bins and each bin keeps its
    minimum (Li et al. 2012), found with one sort instead of `num_perm` hash passes; empty bins
    borrow from a seeded probe sequence ("optimal densification", Shrivastava 2017). Equal bins
    estimate Jaccard similarity like classic MinHash (measured here: RMSE 0.020 vs 0.026 for 128
    multiply-shift permutations) at about 10x the speed.
    """

    def __init__(self, cfg: DedupConfig):
        self.n = cfg.shingle_size
        self.k = cfg.num_perm
        self.bands, self.rows = cfg.bands, cfg.rows
        rng = np.random.default_rng(cfg.seed)
        self.salt = rng.integers(0, 2**63, dtype=np.uint64)
        self.probes = rng.integers(0, self.k, size=(self.k, _PROBES))

    def shingles(self, normalized: str) -> np.ndarray:
        """64-bit hashes of every `n` consecutive code points of normalized text (one for shorter texts)."""
        cps = np.frombuffer(normalized.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        width = max(len(cps) - self.n + 1, 1)
        h = np.zeros(width, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(min(self.n, len(cps))):
                h = h * _MIX + cps[k : k + width] + np.uint64(1)
        return h

    def signature(self, text: str, normalized: str | None = None) -> np.ndarray:
        h = _mix(self.shingles(normalize(text) if normalized is None else normalized) ^ self.salt)
        ordered = np.sort(h)
        # bin = floor(h * k / 2^64) rises with h, so the first hash of each bin is its minimum
        bins = ((ordered >> np.uint64(32)) * np.uint64(self.k)) >> np.uint64(32)
        first = np.searchsorted(bins, np.arange(self.k, dtype=np.uint64))
        filled = first < len(ordered)
        filled[filled] = bins[first[filled]] == np.arange(self.k, dtype=np.uint64)[filled]
        sig = np.zeros(self.k, dtype=np.uint32)
        sig[filled] = (ordered[first[filled]] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        if not filled.all():
            self._densify(sig, filled)
        return sig

    def signatures(self, normalized: list[str]) -> np.ndarray:
        """`signature` of many normalized texts, (D, num_perm): the same values, fewer numpy calls.

        Texts go in groups of about `_GROUP_CHARS` characters: larger arrays fall out of the CPU cache.
        """
        out, group, size = [], [], 0
        for text in normalized:
            group.append(text)
            size += len(text)
            if size >= _GROUP_CHARS:
                out.append(self._signatures(group))
                group, size = [], 0
        if group or not out:
            out.append(self._signatures(group))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _signatures(self, normalized: list[str]) -> np.ndarray:
        k, n, d = self.k, self.n, len(normalized)
        if d == 0:
            return np.zeros((0, k), dtype=np.uint32)
        raw = [t.encode("utf-32-le") for t in normalized]
        lens = np.array([len(r) // 4 for r in raw], dtype=np.int64)
        long = lens >= n
        widths = np.where(long, lens - n + 1, 1)
        parts: list[np.ndarray] = []
        if long.any():
            cps = np.frombuffer(b"".join(raw), dtype=np.uint32).astype(np.uint64)
            span = len(cps) - n + 1
            h = np.zeros(span, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(n):
                    h = h * _MIX + cps[j : j + span] + np.uint64(1)
            offsets = np.cumsum(lens) - lens
            counts = widths[long]
            first = np.cumsum(counts) - counts
            take = np.repeat(offsets[long] - first, counts) + np.arange(int(counts.sum()))
            parts.append(h[take])
        if not long.all():  # texts shorter than a shingle: one hash of all their code points
            order = np.concatenate([np.flatnonzero(long), np.flatnonzero(~long)])
            parts += [self.shingles(normalized[i]) for i in np.flatnonzero(~long)]
            h_all = np.concatenate(parts)
            # back to document order: positions of each document's shingles in h_all
            starts_in_all = np.empty(d, dtype=np.int64)
            starts_in_all[order] = np.cumsum(widths[order]) - widths[order]
            h_all = h_all[np.repeat(starts_in_all, widths) + _ranks(widths)]
        else:
            h_all = parts[0]
        h_all = _mix(h_all ^ self.salt)
        doc = np.repeat(np.arange(d, dtype=np.uint64), widths)
        key = doc * np.uint64(k) + (((h_all >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32))
        mins = np.full(d * k, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(mins, key, h_all)
        filled = (np.bincount(key.astype(np.int64), minlength=d * k) > 0).reshape(d, k)
        sigs = (mins & np.uint64(0xFFFFFFFF)).astype(np.uint32).reshape(d, k)
        sigs[~filled] = 0
        for i in np.flatnonzero(~filled.all(axis=1)):
            self._densify(sigs[i], filled[i])
        return sigs

    def _densify(self, sig: np.ndarray, filled: np.ndarray) -> None:
        """Empty bin i takes the value of the first filled bin in its seeded probe sequence."""
        empty = np.flatnonzero(~filled)
        probes = self.probes[empty]  # (E, _PROBES)
        hit = filled[probes]
        step = np.argmax(hit, axis=1)
        found = hit[np.arange(len(empty)), step]
        source = probes[np.arange(len(empty)), step]
        if not found.all():  # all probes empty (very short text): nearest filled bin to the right
            full = np.flatnonzero(filled)
            source[~found] = full[np.searchsorted(full, empty[~found]) % len(full)]
            step[~found] = _PROBES
        # the probe step is part of the value: two texts agree only if they borrowed alike
        sig[empty] = sig[source] ^ (step + 1).astype(np.uint32)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(N, num_perm) signatures -> (N, bands) 64-bit keys; equal key in any band = candidate pair."""
        rows = sigs.reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        keys = np.zeros((len(sigs), self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for r in range(self.rows):
                keys = keys * _MIX + rows[:, :, r] + np.uint64(1)
        return keys


def _ranks(widths: np.ndarray) -> np.ndarray:
    """0..w-1 for each w in widths, concatenated."""
    total = int(widths.sum())
    return np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads the polynomial shingle hash over all 64 bits."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def exact_duplicates(items: Iterable[tuple[int, Hashable, str]]) -> dict[Hashable, tuple[Hashable, str, str]]:
    """(hash, order, id) items -> {removed order: (kept order, removed id, kept id)}; first in order is kept."""
    first: dict[int, tuple[Hashable, str]] = {}
    removed: dict[Hashable, tuple[Hashable, str, str]] = {}
    for h, order, doc_id in sorted(items, key=lambda x: x[1]):
        if h in first:
            removed[order] = (first[h][0], doc_id, first[h][1])
        else:
            first[h] = (order, doc_id)
    return removed


def group_edges(
    members: Sequence[tuple[Any, np.ndarray]], threshold: float, max_reps: int = 256
) -> list[tuple[Any, Any, float]]:
    """One LSH bucket, members sorted by order -> verified (member, earlier member, similarity) links.

    Each member is compared with the bucket's representatives so far (members that matched none
    before them) and linked to the first that agrees enough. Comparing with the first member only
    would miss pairs that share a bucket with unrelated documents, which boilerplate-heavy corpora
    produce; `max_reps` bounds the work in such buckets.
    """
    if len(members) == 2:  # the common case: one candidate pair
        (a, sig_a), (b, sig_b) = members
        sim = float((sig_a == sig_b).mean())
        return [(b, a, round(sim, 4))] if sim >= threshold else []
    reps = np.empty((min(len(members), max_reps), len(members[0][1])), dtype=members[0][1].dtype)
    reps[0] = members[0][1]
    rep_orders = [members[0][0]]
    edges = []
    for order, sig in members[1:]:
        sims = (reps[: len(rep_orders)] == sig).mean(axis=1)
        hit = np.flatnonzero(sims >= threshold)
        if hit.size:
            edges.append((order, rep_orders[hit[0]], round(float(sims[hit[0]]), 4)))
        elif len(rep_orders) < max_reps:
            reps[len(rep_orders)] = sig
            rep_orders.append(order)
    return edges


def bucket_edges(
    groups: Iterable[np.ndarray], sigs: np.ndarray, threshold: float, max_reps: int = 256
) -> list[tuple[int, int, float]]:
    """`group_edges` for many buckets at once, on row numbers of `sigs`: (member, earlier member, similarity).

    Each group is an ascending array of rows (canonical order). Groups of one size are verified
    together: one array comparison gives every pairwise similarity, and the representative rule
    of `group_edges` runs on bit masks. The edges are exactly `group_edges`'s; groups repeated in
    several bands are verified once.
    """
    by_size: dict[int, list[np.ndarray]] = {}
    seen: set[bytes] = set()
    for g in groups:
        key = g.tobytes()
        if key not in seen:
            seen.add(key)
            by_size.setdefault(len(g), []).append(g)
    k = sigs.shape[1]
    edges: list[tuple[int, int, float]] = []
    for size, same in sorted(by_size.items()):
        if size > 64:  # large buckets: blocks of members against the representatives so far
            for g in same:
                edges += _large_group_edges(g, sigs, threshold, max_reps)
            continue
        step = max(1, (1 << 25) // (size * size * k))  # bound the comparison array to ~32 MB
        for i in range(0, len(same), step):
            members = np.stack(same[i : i + step])  # (G, size)
            s = sigs[members]  # (G, size, k)
            if size == 2:
                sim = _agree(s[:, 0], s[:, 1]) / k
                for (a, b), v in zip(
                    members[sim >= threshold].tolist(), sim[sim >= threshold].tolist(), strict=True
                ):
                    edges.append((b, a, round(v, 4)))
                continue
            sim = _agree(s[:, :, None, :], s[:, None, :, :]) / k  # (G, size, size)
            bits = ((sim >= threshold).astype(np.uint64) << np.arange(size, dtype=np.uint64)).sum(axis=2)
            found: list[tuple[int, int, int]] = []
            for gi, rows in enumerate(bits.tolist()):
                reps, n_reps = 1, 1
                for j in range(1, size):
                    hit = rows[j] & reps
                    if hit:
                        found.append((gi, j, (hit & -hit).bit_length() - 1))  # the first agreeing rep
                    elif n_reps < max_reps:
                        reps |= 1 << j
                        n_reps += 1
            if found:
                gi, j, r = np.array(found).T
                for a, b, v in zip(
                    members[gi, j].tolist(), members[gi, r].tolist(), sim[gi, j, r].tolist(), strict=True
                ):
                    edges.append((a, b, round(v, 4)))
    return edges


def _agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of equal values along the last axis (broadcast); byte-sized sums while they fit."""
    return np.add.reduce(a == b, axis=-1, dtype=np.uint8 if a.shape[-1] < 256 else np.int64)


def _large_group_edges(
    members: np.ndarray, sigs: np.ndarray, threshold: float, max_reps: int, block: int = 64
) -> list[tuple[int, int, float]]:
    """`group_edges` of one large bucket: each block of members is compared with the earlier
    representatives and with itself in two array operations; the rule then runs on bit masks."""
    k = sigs.shape[1]
    rep_rows = np.empty((min(len(members), max_reps), k), dtype=sigs.dtype)
    reps: list[int] = []  # representatives, in order of appearance
    edges: list[tuple[int, int, float]] = []
    for b0 in range(0, len(members), block):
        ids = members[b0 : b0 + block]
        rows = sigs[ids]
        n = len(ids)
        if reps:
            old = _agree(rows[:, None, :], rep_rows[None, : len(reps), :]) / k  # (n, R)
            old_ok = old >= threshold
            old_any = old_ok.any(axis=1).tolist()
            old_first = old_ok.argmax(axis=1).tolist()
        else:
            old_any = [False] * n
        within = _agree(rows[:, None, :], rows[None, :, :]) / k  # (n, n)
        bits = ((within >= threshold).astype(np.uint64) << np.arange(n, dtype=np.uint64)).sum(axis=1).tolist()
        new_reps = 0  # bit mask of this block's representatives
        for j in range(n):
            if old_any[j]:
                r = old_first[j]
                edges.append((int(ids[j]), reps[r], round(float(old[j, r]), 4)))
            elif hit := bits[j] & new_reps:
                r = (hit & -hit).bit_length() - 1
                edges.append((int(ids[j]), int(ids[r]), round(float(within[j, r]), 4)))
            elif len(reps) + new_reps.bit_count() < max_reps:
                new_reps |= 1 << j
        for j in range(n):
            if new_reps >> j & 1:
                rep_rows[len(reps)] = rows[j]
                reps.append(int(ids[j]))
    return edges


def resolve_clusters(edges: Iterable[tuple[Any, Any, float]]) -> dict[Any, tuple[Any, float]]:
    """Union-find over verified pairs -> {removed order: (kept order, similarity of its closest link)}.

    The kept document of a cluster is its first in canonical order.
    """
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    best: dict[Any, float] = {}
    for a, b, sim in sorted(edges, key=lambda e: (e[0], e[1])):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        best[a] = max(best.get(a, 0.0), sim)
    return {x: (find(x), best.get(x, 0.0)) for x in sorted(parent) if find(x) != x}
