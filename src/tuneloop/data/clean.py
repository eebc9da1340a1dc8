"""Cleaning (unicode normalization, control characters, whitespace) and quality filters.

Nothing here assumes words are separated by spaces: lengths count characters, and the repeated
n-gram filter treats each CJK character as a unit (a run of other letters/digits is one unit).
"""

from __future__ import annotations

import re
import unicodedata

from tuneloop.data.config import CleanConfig, QualityConfig
from tuneloop.data.document import Doc
from tuneloop.data.ngrams import UNITS, repeated_share, repeated_share_plain, unit_ids
from tuneloop.data.stats import Stats
from tuneloop.data.step import Filter, Step

# C0/C1 controls except \t \n, plus invisible format characters that only hide text (bidi, ZWSP, BOM)
_CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")  # exotic spaces (incl. ideographic)
_INNER_RUNS = re.compile(r"(?<=\S)[ \t]{2,}")  # keeps leading indentation (code, lists)
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_SYMBOLS = re.compile(r"[^\w\s]|_")
# what _SYMBOLS does not count in ASCII text: letters, digits and what str.isspace() calls space
_ASCII_NOT_SYMBOLS = bytes(c for c in range(128) if chr(c).isalnum() or chr(c).isspace())


def clean_text(text: str, cfg: CleanConfig) -> str:
    # each regex runs only if a substring it needs is present (substring tests are memchr-fast,
    # a regex scan is not): the result is the same, most text skips most patterns
    if cfg.normalization != "none":
        text = unicodedata.normalize(cfg.normalization, text)
    ascii_ = text.isascii()
    if cfg.remove_control:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not ascii_:
            text = _CONTROL.sub("", text.replace("\u2028", "\n"))
        elif not _printable_ascii(text):
            text = _CONTROL.sub("", text)
    if cfg.normalize_whitespace:
        if not ascii_:
            text = _SPACES.sub(" ", text)
        if "  " in text or "\t" in text:
            text = _INNER_RUNS.sub(" ", text)
        if " \n" in text or "\t\n" in text:
            text = _TRAILING.sub("\n", text)
        if "\n\n\n" in text:
            text = _BLANK_LINES.sub("\n\n", text)
        text = text.strip()
    return text


_NOT_PRINTABLE = bytes(c for c in range(128) if (c < 32 and chr(c) not in "\t\n") or c == 127)


def _printable_ascii(text: str) -> bool:
    """No ASCII control character other than tab and newline (the ones `_CONTROL` would remove)."""
    raw = text.encode("ascii")
    return len(raw.translate(None, _NOT_PRINTABLE)) == len(raw)


class Cleaner(Step):
    name = "clean"

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg

    def process(self, doc: Doc, stats: Stats) -> Doc | None:
        doc.map_text(lambda t: clean_text(t, self.cfg))
        return doc


class QualityFilter(Filter):
    """Length, symbol ratio, repeated lines, repeated n-grams: thresholds from `QualityConfig`.

    For chat rows (sft, preference) only `max_chars` applies unless `quality.apply_to_chat` is set.
    """

    name = "quality"

    def __init__(self, cfg: QualityConfig, chat: bool = False):
        self.cfg = cfg
        self.full = cfg.enabled and (cfg.apply_to_chat or not chat)

    def reason(self, doc: Doc) -> str | None:
        text = doc.view()
        chars = non_space_chars(text)
        if chars > self.cfg.max_chars:
            return "too_long"
        if not self.full:  # chat rows: "Hi" -> "Hello!" is a fine example, so only size limits apply
            return None
        if chars < self.cfg.min_chars:
            return "too_short"
        if symbol_count(text) / chars > self.cfg.max_symbol_ratio:
            return "symbol_ratio"
        if duplicate_line_fraction(text) > self.cfg.max_duplicate_line_fraction:
            return "repeated_lines"
        if duplicate_ngram_fraction(text, self.cfg.ngram_size) > self.cfg.max_duplicate_ngram_fraction:
            return "repeated_ngrams"
        return None


def non_space_chars(text: str) -> int:
    """Characters that are not whitespace (str.isspace), i.e. sum(map(len, text.split()))."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw.translate(None, _ASCII_SPACE))
    return sum(map(len, text.split()))


def symbol_count(text: str) -> int:
    """Characters that are neither word characters nor whitespace, plus underscores (`_SYMBOLS` matches)."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw.translate(None, _ASCII_NOT_SYMBOLS))
    return _SYMBOLS.subn("", text)[1]


def duplicate_line_fraction(text: str) -> float:
    lines = [s for line in text.split("\n") if (s := line.strip())]
    if len(lines) < 4:  # too few lines to call anything repetitive
        return 0.0
    return 1 - len(set(lines)) / len(lines)


def duplicate_ngram_fraction(text: str, n: int) -> float:
    """Share of unit n-grams that occur more than once (CJK characters are units, as are words).

    Units are `UNITS` of the lower-cased text. Long texts are counted by `ngrams.py` without a
    string per word (2-3x faster on 30k characters, slower below ~5k: numpy's cost per call).
    """
    found = unit_ids(text) if _long(text) else None
    if found is None:
        units = _ascii_units(text) if text.isascii() else UNITS.findall(text.lower())
        if len(units) < 4 * n:
            return 0.0
        repeated, total = repeated_share_plain(units, n)
    else:
        ids, distinct = found
        if len(ids) < 4 * n:
            return 0.0
        repeated, total = repeated_share(ids, distinct, n)
    return repeated / total


def _long(text: str) -> bool:
    """Whether numpy beats the plain count: from ~8k characters, ~1k where most are CJK (3 UTF-8 bytes)."""
    if len(text) >= 8_000:
        return True
    return (
        len(text) >= 1_000
        and not text.isascii()
        and len(text.encode("utf-8", "surrogatepass")) > 2 * len(text)
    )


def _ascii_units(text: str) -> list[str]:
    return text.lower().encode("ascii").translate(_ASCII_UNIT_BYTES).decode("ascii").split()


# UNITS of ASCII text are runs of [A-Za-z0-9_]: every other byte becomes a space, then str.split
_ASCII_UNIT_BYTES = bytes(c if chr(c).isalnum() or c == ord("_") else 32 for c in range(128)) + b" " * 128
