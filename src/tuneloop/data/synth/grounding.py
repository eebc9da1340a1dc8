"""Is an answer grounded in its chunk? String heuristics, cheap enough for every row:

- every number in the answer appears in the chunk (thousands separators ignored): a small teacher's
  usual mistake is a wrong number, and a wrong number is the worst kind of wrong answer;
- at least `min_support` of the answer's content units appear in the chunk: English words of 3+
  letters that are not stop words (a shared 5-letter stem counts: "connects" ~ "connected"), and for
  Chinese, pairs of adjacent characters (Chinese has no spaces to split words at).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneloop.data.dedup import nfkc
from tuneloop.data.ngrams import CJK

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(rf"[^\W\d_{CJK}][^\W{CJK}]*")
_CJK_RUN = re.compile(f"[{CJK}]+")
_STEM = 5
STOP = frozenset(
    """the and for are was were you your with that this from can has have had not but all any its
    into out our one use used using per via than then them they their there what which who whom when
    where why how will would should could may might must does did doing done been being also only
    just more most such each other some very about after before over under both either neither yes
    please here those these shall upon onto off way get gets got able""".split()  # noqa: SIM905 (a word list reads better as text)
)


@dataclass(frozen=True)
class Grounding:
    grounded: bool
    support: float  # share of content units found in the chunk (1.0 when there are none)
    missing_numbers: tuple[str, ...] = ()


class ChunkIndex:
    """A chunk's numbers, words, stems and character pairs, built once for all of its answers."""

    def __init__(self, chunk: str):
        text = nfkc(chunk).lower()
        self.numbers = {_plain_number(n) for n in _NUMBER.findall(text)}
        self.digits = _plain_number(text)  # numbers written as part of a longer token (e.g. "NL-R5")
        self.words = set(_WORD.findall(text))
        self.stems = {w[:_STEM] for w in self.words if len(w) > _STEM}
        self.pairs = {run[i : i + 2] for run in _CJK_RUN.findall(text) for i in range(len(run) - 1)}
        self.chars = set("".join(_CJK_RUN.findall(text)))

    def check(self, answer: str, min_support: float) -> Grounding:
        text = nfkc(answer).lower()
        missing = tuple(
            n
            for n in dict.fromkeys(_plain_number(x) for x in _NUMBER.findall(text))
            if n not in self.numbers and n not in self.digits
        )
        units = [w for w in _WORD.findall(text) if len(w) >= 3 and w not in STOP]
        found = sum(w in self.words or (len(w) > _STEM and w[:_STEM] in self.stems) for w in units)
        for run in _CJK_RUN.findall(text):
            if len(run) == 1:  # a lone character: found when the chunk has it at all
                units.append(run)
                found += run in self.chars
                continue
            pairs = [run[i : i + 2] for i in range(len(run) - 1)]
            units += pairs
            found += sum(p in self.pairs for p in pairs)
        support = found / len(units) if units else 1.0
        return Grounding(not missing and support >= min_support, round(support, 3), missing)


def _plain_number(text: str) -> str:
    return text.replace(",", "")
