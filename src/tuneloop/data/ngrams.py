"""The repeated n-gram share of the quality filter, exact and vectorized (numpy, no string per word).

Units are what `UNITS` finds in the lower-cased text: each CJK character alone, else runs of
word characters. Each unit gets an exact id: a polynomial hash of its characters, which is the
unit itself written in base 39 for ASCII units of at most 12 characters (a-z, 0-9 and _ are the
digits 1..37; 39**12 < 2**64) and the code point for a lone non-ASCII character, so only longer
units can collide, and those are compared character by character with the first unit of the same
hash. An n-gram of ids packs exactly into one integer (or is renumbered pairwise when it would
not fit) and `np.unique` counts them. A text whose hashes do collide returns None and is counted
the plain way.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
UNITS = re.compile(rf"[{CJK}]|[^\W{CJK}]+")  # the definition; what follows computes the same faster
_ALONE_RE, _WORD_RE = re.compile(f"[{CJK}]"), re.compile(r"\w")

_BASE = 39  # odd, so invertible modulo 2**64 (prefix sums below)
_EXACT_LEN = 12  # ASCII units this long or shorter are their own hash: 39**12 < 2**64
_SPREAD = np.uint64(0x9E3779B97F4A7C15)
_LONE = np.uint64(_BASE**_EXACT_LEN)  # hash of a lone non-ASCII character: _LONE + code point
_ASCII_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789_"
# ASCII character -> its digit (1..37), 0 for characters that separate units
_ASCII_VALUE = bytes(_ASCII_DIGITS.index(chr(c)) + 1 if chr(c) in _ASCII_DIGITS else 0 for c in range(256))
_SEPARATOR, _WORD, _ALONE = 0, 1, 2
_CLASSES = np.full(0x110000, -1, dtype=np.int8)  # code point -> class, filled as characters are met
_CLASSES[:128] = [_WORD if _ASCII_VALUE[c] else _SEPARATOR for c in range(128)]
_powers: list[np.ndarray] = []


def unit_ids(text: str) -> tuple[np.ndarray, int] | None:
    """Per unit of `text` an id (equal units, equal ids) and the number of distinct units; None on a collision."""
    low = text.lower()
    if low.isascii():
        raw = low.encode("ascii")
        chars = np.frombuffer(raw, dtype=np.uint8)
        value = np.frombuffer(raw.translate(_ASCII_VALUE), dtype=np.uint8)
        starts, ends = _runs(value != 0, None)
        long = (ends - starts) > _EXACT_LEN
        lone = None
    else:
        chars = np.frombuffer(low.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        cls = _classes(chars)
        high = chars >= 128
        # non-ASCII characters: digits spread over 64 bits, so that collisions are no more than chance
        value = np.where(high, chars * _SPREAD, np.frombuffer(_ASCII_VALUE, np.uint8)[chars & 127])
        starts, ends = _runs(cls == _WORD, cls == _ALONE)
        highs = np.concatenate(([0], np.cumsum(high)))
        has_high = highs[ends] > highs[starts]
        lone = has_high & (ends - starts == 1)
        long = (has_high & ~lone) | ((ends - starts) > _EXACT_LEN)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64), 0
    hashes = _hashes(value, starts, ends)
    if lone is not None and lone.any():
        hashes[lone] = _LONE + chars[starts[lone]].astype(np.uint64)
    ids, reps = _group(hashes)
    if long.any() and not _same_units(chars, starts, ends, ids, reps, long):
        return None
    return ids, len(reps)


def repeated_share_plain(units: list[str], n: int) -> tuple[int, int]:
    """`repeated_share` from the units themselves: the definition, faster than numpy on short texts."""
    total = len(units) - n + 1
    if total <= 0:
        return 0, max(total, 0)
    grams = list(zip(*(units[i:] for i in range(n)), strict=False))
    if len(set(grams)) == total:  # the usual answer, and a set is cheaper than a Counter
        return 0, total
    return sum(c for c in Counter(grams).values() if c > 1), total


def repeated_share(ids: np.ndarray, distinct: int, n: int) -> tuple[int, int]:
    """(n-grams that occur more than once, counted with repeats; all n-grams) of a sequence of unit ids."""
    total = len(ids) - n + 1
    if total <= 0 or distinct == len(ids):  # no unit repeats: no n-gram does
        return 0, max(total, 0)
    ids = ids.astype(np.uint64)
    if distinct**n < 2**64:  # n ids as the digits of one number in base `distinct`
        keys = ids[:total].copy()
        for k in range(1, n):
            keys = keys * np.uint64(distinct) + ids[k : k + total]
    else:  # grow the n-grams one unit at a time, renumbering them so the next step fits
        keys = ids
        for k in range(1, n):
            keys = keys[:-1] * np.uint64(distinct) + ids[k:]
            if k < n - 1:
                keys = np.unique(keys, return_inverse=True)[1].astype(np.uint64)
    counts = np.unique(keys, return_counts=True)[1]
    return (0 if len(counts) == total else int(counts[counts > 1].sum())), total


def _classes(chars: np.ndarray) -> np.ndarray:
    cls = _CLASSES[chars]
    unknown = cls < 0
    if unknown.any():  # classify characters not met before, each once per process, as UNITS does
        for cp in np.unique(chars[unknown]).tolist():
            c = chr(cp)
            _CLASSES[cp] = _ALONE if _ALONE_RE.match(c) else _WORD if _WORD_RE.match(c) else _SEPARATOR
        cls = _CLASSES[chars]
    return cls


def _runs(word: np.ndarray, alone: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each unit: maximal runs of word characters, and each `alone` character."""
    first = word & ~np.concatenate(([False], word[:-1]))
    last = word & ~np.concatenate((word[1:], [False]))
    if alone is not None:
        first, last = first | alone, last | alone
    return np.flatnonzero(first), np.flatnonzero(last) + 1


def _hashes(value: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """sum(value[j] * 39**(end-1-j)) mod 2**64 per unit, from one prefix sum over the text."""
    up, down = _pow(len(value))
    prefix = np.zeros(len(value) + 1, dtype=np.uint64)
    np.cumsum(value * down, out=prefix[1:])  # sum of value[j] * 39**-j (mod 2**64)
    return (prefix[ends] - prefix[starts]) * up[ends - 1]


def _pow(size: int) -> tuple[np.ndarray, np.ndarray]:
    """39**j and 39**-j modulo 2**64 for j < size (uint64 arithmetic wraps modulo 2**64)."""
    if not _powers or len(_powers[0]) < size:
        grown = max(size, 2 * len(_powers[0]) if _powers else 1 << 16)
        up = np.full(grown, _BASE, dtype=np.uint64)
        down = np.full(grown, pow(_BASE, -1, 2**64), dtype=np.uint64)
        up[0] = down[0] = 1
        _powers[:] = [np.cumprod(up), np.cumprod(down)]
    return _powers[0][:size], _powers[1][:size]


def _group(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item the index of its hash among the distinct ones, and one item holding each distinct hash."""
    order = np.argsort(hashes)
    ordered = hashes[order]
    new = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    ids = np.empty(len(hashes), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, order[new]


def _same_units(
    chars: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    ids: np.ndarray,
    reps: np.ndarray,
    long: np.ndarray,
) -> bool:
    """Whether every unit that may share its hash with another (`long`) equals its group's representative."""
    rep = reps[ids]
    todo = np.flatnonzero((rep != np.arange(len(ids))) & (long | long[rep]))
    if len(todo) == 0:
        return True
    other = rep[todo]
    lengths = ends[todo] - starts[todo]
    if not np.array_equal(lengths, ends[other] - starts[other]):
        return False
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    mine = chars[np.repeat(starts[todo], lengths) + offsets]
    theirs = chars[np.repeat(starts[other], lengths) + offsets]
    return bool(np.array_equal(mine, theirs))
