"""The vectorized repeated n-gram share (`ngrams.py`) is the definition's number, collisions included.

The definition: Counter over the n-grams of `UNITS.findall(text.lower())`. Checked on long random
texts (ASCII words, words over 12 characters, CJK, accented and other non-ASCII words, odd cases
of lower()), n from 2 to 8 (8 takes the renumbering path once there are 256 distinct units), and on
Thue-Morse words, which collide under any polynomial hash modulo 2**64.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tuneloop.data import clean, ngrams

VOCAB = [
    "the", "a", "of", "data", "model", "x1", "_id", "v2_0", "tokenizer_configuration", "internationalization",
    "naïve", "café", "Straße", "ÉCOLE", "İstanbul", "K", "ǅemal", "数", "据", "模型", "한국어", "カタカナ",
    "...", " ", "  ", "\n", ", ", "—", "“", "”", "½", "x²", "٣", "\ud800", "😀", "a_b_c_d_e_f_g_h_i_j",
]  # fmt: skip


def definition(text: str, n: int) -> float:
    units = ngrams.UNITS.findall(text.lower())
    if len(units) < 4 * n:
        return 0.0
    counts = Counter(zip(*(units[i:] for i in range(n)), strict=False))
    return sum(c for c in counts.values() if c > 1) / (len(units) - n + 1)


def long_text(rng: random.Random, words: int, vocab: list[str]) -> str:
    out = []
    for _ in range(words):
        w = rng.choice(vocab) if rng.random() < 0.8 else f"w{rng.randrange(2000)}"
        out.append(w + rng.choice([" ", " ", "\n", ", ", "", "."]))
    if rng.random() < 0.5:  # a repeated passage
        i = rng.randrange(len(out) // 2)
        out += out[i : i + rng.randrange(1, 60)]
    return "".join(out)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_vectorized_share_is_the_definition(n: int) -> None:
    rng = random.Random(n)
    ascii_vocab = [w for w in VOCAB if w.isascii()]
    vectorized = 0
    for i in range(120):
        text = long_text(rng, rng.randrange(300, 4000), ascii_vocab if i % 3 == 0 else VOCAB)
        found = ngrams.unit_ids(text)
        assert found is not None
        ids, distinct = found
        units = ngrams.UNITS.findall(text.lower())
        # one id per distinct unit: equal units, equal ids, and no two units share one
        assert len(ids) == len(units) and distinct == len(set(units)) == len(
            set(zip(units, ids.tolist(), strict=True))
        )
        if len(ids) >= 4 * n:
            repeated, total = ngrams.repeated_share(ids, distinct, n)
            assert repeated / total == definition(text, n), text[:200]
        vectorized += clean._long(text)
        assert clean.duplicate_ngram_fraction(text, n) == definition(text, n)
    assert vectorized > 30


def test_colliding_units_are_counted_the_plain_way() -> None:
    """Thue-Morse word t and its complement: different units, the same hash; the share stays exact."""
    bits = [0]
    while len(bits) < 2048:
        bits += [1 - b for b in bits]
    t, u = "".join("ab"[b] for b in bits), "".join("ba"[b] for b in bits)
    text = " ".join([t, "x", "y", u, "x", "y", t, "x", "y"] * 3)
    assert ngrams.unit_ids(text) is None  # the collision is found, not trusted
    for n in (2, 3):
        assert clean.duplicate_ngram_fraction(text, n) == definition(text, n) > 0


def test_distinct_units_share_nothing() -> None:
    text = " ".join(f"word{i}" for i in range(5000))
    ids, distinct = ngrams.unit_ids(text)
    assert distinct == 5000 and ngrams.repeated_share(ids, distinct, 5) == (0, 4996)
    assert clean.duplicate_ngram_fraction(text, 5) == 0.0


def test_a_repeated_text_is_all_repeats() -> None:
    text = ("机器学习模型需要高质量的数据。" * 200) + ("the same words again " * 500)
    assert clean.duplicate_ngram_fraction(text, 5) == definition(text, 5) > 0.95
