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
       "fe80::1", "11010519491231002X", "(555) 123-4567", "v1.2.3", "a:b:c", "don't", "hello world",
       "std::vector", "2001:db8::1", "::", "10.0.0.1", "1.2.3.4", "=", ":", "card", "4111111111111111"]
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


def ref_spans(text: str) -> dict[str, list[tuple[int, int]]]:
    """Each detector as one plain whole-text regex scan plus its validation: no anchors, no windows."""
    from tuneloop.data import pii_network as net
    from tuneloop.data import pii_numbers as num

    def ipv4_ok(m: re.Match) -> bool:
        if net._NOT_AN_ADDRESS.search(text, max(0, m.start() - 12), m.start()):
            return False
        return net._host_address(net.ipaddress.IPv4Address(m.group()))

    def card_key_ok(m: re.Match) -> bool:
        s = m.start()
        return not (s and text[s - 1] in "=:" and not num._CARD_WORDS.search(text, max(0, s - 40), s))

    return {
        "email": [m.span() for m in net._EMAIL.finditer(text) if net._real_tld(m.group("tld"))],
        "ipv4": [m.span() for m in net._IPV4.finditer(text) if ipv4_ok(m)],
        "ipv6": [m.span() for m in net._IPV6.finditer(text) if net._ipv6_ok(m.group())],
        "id_card": [m.span() for m in num._ID.finditer(text) if num._plausible_id(m.group())],
        "bank_card": [
            m.span() for m in num._CARD.finditer(text) if num._card_ok(m.group()) and card_key_ok(m)
        ],
    }


def test_pii_anchored_scans_find_what_whole_text_scans_find() -> None:
    """Detectors scan from cheap anchors ('@', '.d.d.', ':h:', digit runs); a whole-text scan agrees."""
    from tuneloop.data import pii_network as net
    from tuneloop.data import pii_numbers as num

    fast = {
        "email": net.find_emails,
        "ipv4": net.find_ipv4,
        "ipv6": net.find_ipv6,
        "id_card": num.find_id_cards,
        "bank_card": num.find_bank_cards,
    }
    for text in texts(4, 3000):
        want = ref_spans(text)
        for kind, find in fast.items():
            assert sorted(find(text)) == sorted(want[kind]), (kind, text)


def test_pii_digit_pre_check_changes_nothing() -> None:
    """Text without a digit skips the number and address detectors; the full run finds nothing there either."""
    for text in texts(5, 2000):
        if not any(c.isdigit() for c in text):
            assert pii.find_spans(text) == pii.find_spans(text, ["email", "secret"]), repr(text)


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
