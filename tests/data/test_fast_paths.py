"""The cheap paths of cleaning, quality, PII and dedup normalization give exactly the old answers.

Each fast path (ASCII byte tables, substring pre-checks before a regex, NFKC of full-width
characters) is compared with the straightforward implementation it replaced, on random text that
mixes ASCII, CJK, full-width forms, controls, odd spaces, digits and PII-like strings.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter

import pytest

from tuneloop.data import clean, dedup, pii
from tuneloop.data.config import CleanConfig

POOL = (
    [chr(c) for c in range(128)]
    + ["  ", "\t\t", " \n", "\t\n", "\n\n\n", "\r\n", "\u2028", "\u3000", "\xa0", "\u200b", "\ufeff", "\x85"]
    + list("中文数据模型。，！？：；（）ａＡ０＿") + [chr(c) for c in range(0xFF01, 0xFF20)]
    + ["ｶﾞ", "e\u0301", "ﬁ", "²", "½", "Ⅻ", "한", "😀", "ß", "İ"]
    + ["alice@example.com", "13812345678", "+86 138 1234 5678", "4111 1111 1111 1111", "192.168.1.1",
       "fe80::1", "11010519491231002X", "(555) 123-4567", "v1.2.3", "a:b:c", "don't", "hello world"]
)  # fmt: skip


def texts(seed: int, n: int = 4000):
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(POOL) for _ in range(rng.randint(0, 60)))


def ref_clean(text: str, cfg: CleanConfig) -> str:
    if cfg.normalization != "none":
        text = unicodedata.normalize(cfg.normalization, text)
    if cfg.remove_control:
        text = clean._CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n"))
    if cfg.normalize_whitespace:
        text = clean._SPACES.sub(" ", text)
        text = clean._INNER_RUNS.sub(" ", text)
        text = clean._TRAILING.sub("\n", text)
        text = clean._BLANK_LINES.sub("\n\n", text).strip()
    return text


@pytest.mark.parametrize(
    "cfg",
    [
        CleanConfig(),
        CleanConfig(normalization="NFKC"),
        CleanConfig(normalization="none", remove_control=False),
    ],
)
def test_clean_text_matches_the_plain_regex_chain(cfg: CleanConfig) -> None:
    for text in texts(1):
        assert clean.clean_text(text, cfg) == ref_clean(text, cfg), repr(text)


def test_quality_measures_match_their_regex_definitions() -> None:
    for text in texts(2):
        assert clean.symbol_count(text) == clean._SYMBOLS.subn("", text)[1], repr(text)
        assert clean.non_space_chars(text) == sum(map(len, text.split())), repr(text)
        units = clean.UNITS.findall(text.lower())
        if text.isascii():
            assert clean._ascii_units(text) == units, repr(text)
        for n in (2, 3):
            expected = 0.0
            if len(units) >= 4 * n:
                grams = Counter(zip(*(units[i:] for i in range(n)), strict=False))
                expected = sum(c for c in grams.values() if c > 1) / (len(units) - n + 1)
            assert clean.duplicate_ngram_fraction(text, n) == expected, repr(text)


def test_dedup_normalization_matches_nfkc_then_words() -> None:
    words = re.compile(r"[^\W_]+")
    for text in texts(3):
        assert dedup.nfkc(text) == unicodedata.normalize("NFKC", text), repr(text)
        assert dedup.normalize(text) == " ".join(words.findall(unicodedata.normalize("NFKC", text).lower()))


def ref_redact(text: str, types=None, found=None) -> str:
    for det in pii.DETECTORS:
        if (types is not None and det.type not in types) or not det.maybe(text):
            continue

        def sub(m, det=det):
            if not det.valid(m.group()):
                return m.group()
            if found is not None:
                found.append((det.type, m.group()))
            return det.placeholder

        text = det.pattern.sub(sub, text)
    return text


def test_pii_pre_checks_change_nothing() -> None:
    for types in (None, ["phone", "ip"], ["email"]):
        for text in texts(4, 3000):
            got, want = [], []
            assert pii.redact(text, types, got) == ref_redact(text, types, want), repr(text)
            assert got == want


def test_parquet_through_arrow_json_is_the_same_file(tmp_path) -> None:
    """Pretrain Parquet via Arrow's JSON reader: byte-identical to writing the parsed rows in batches."""
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneloop.data.output import _BATCH, dump_row, schema, write_parquet

    rng = random.Random(6)
    rows = [
        {"text": "".join(rng.choice(POOL) for _ in range(rng.randint(0, 40)))}
        for _ in range(2 * _BATCH + 123)
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(dump_row(r) + "\n" for r in rows), encoding="utf-8")
    ref = tmp_path / "ref.parquet"
    sch = schema("pretrain")
    with pq.ParquetWriter(ref, sch, compression="zstd") as writer:
        parsed = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
        for i in range(0, len(parsed), _BATCH):
            writer.write_table(pa.Table.from_pylist(parsed[i : i + _BATCH], schema=sch))
    out = write_parquet(jsonl, "pretrain")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(ref.read_bytes()).digest()
    assert pq.read_table(out).column("text").to_pylist() == [r["text"] for r in rows]
