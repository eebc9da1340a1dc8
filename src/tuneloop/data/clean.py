"""Cleaning (unicode normalization, control characters, whitespace) and quality filters.

Nothing here assumes words are separated by spaces: lengths count characters, and the repeated
n-gram filter treats each CJK character as a unit (a run of other letters/digits is one unit).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from tuneloop.data.config import CleanConfig, QualityConfig
from tuneloop.data.document import Doc
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
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
UNITS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_SYMBOLS = re.compile(r"[^\w\s]|_")


def clean_text(text: str, cfg: CleanConfig) -> str:
    if cfg.normalization != "none":
        text = unicodedata.normalize(cfg.normalization, text)
    if cfg.remove_control:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n"))
    if cfg.normalize_whitespace:
        text = _SPACES.sub(" ", text)
        text = _INNER_RUNS.sub(" ", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANK_LINES.sub("\n\n", text).strip()
    return text


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
        chars = sum(map(len, text.split()))
        if chars > self.cfg.max_chars:
            return "too_long"
        if not self.full:  # chat rows: "Hi" -> "Hello!" is a fine example, so only size limits apply
            return None
        if chars < self.cfg.min_chars:
            return "too_short"
        if _SYMBOLS.subn("", text)[1] / chars > self.cfg.max_symbol_ratio:
            return "symbol_ratio"
        if duplicate_line_fraction(text) > self.cfg.max_duplicate_line_fraction:
            return "repeated_lines"
        if duplicate_ngram_fraction(text, self.cfg.ngram_size) > self.cfg.max_duplicate_ngram_fraction:
            return "repeated_ngrams"
        return None


def duplicate_line_fraction(text: str) -> float:
    lines = [s for line in text.split("\n") if (s := line.strip())]
    if len(lines) < 4:  # too few lines to call anything repetitive
        return 0.0
    return 1 - len(set(lines)) / len(lines)


def duplicate_ngram_fraction(text: str, n: int) -> float:
    """Share of unit n-grams that occur more than once (CJK characters are units, as are words)."""
    units = UNITS.findall(text.lower())
    if len(units) < 4 * n:
        return 0.0
    grams = Counter(zip(*(units[i:] for i in range(n)), strict=False))
    total = len(units) - n + 1
    return sum(c for c in grams.values() if c > 1) / total
