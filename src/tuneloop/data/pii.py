"""PII and secrets: find them, redact them to typed placeholders, or report them without changing text.

The public functions, shared by the data pipeline, the gateway's request log and the loop's curation:

    redact(text, types=None, found=None) -> str      "mail <EMAIL>, key <SECRET>"
    find_pii(text, types=None) -> [(type, match)]     what `redact` would replace
    find_spans(text, types=None) -> [Span]            where, without changing anything

Precision comes first: every detector matches whole tokens only and validates what it found
(`pii_network`, `pii_numbers`, `pii_secrets` say how), because a false positive silently corrupts
training text (`std::vector` -> `st<IP>vector`) while a miss leaves one item in place. Detectors
find spans on the original text; overlaps go to the earlier type in `PII_TYPES` (a secret over the
email inside its URL, an ID over the card-shaped digits inside it), then the longer span.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from tuneloop.data.config import PII_TYPES, PIIConfig
from tuneloop.data.document import Doc
from tuneloop.data.pii_network import find_emails, find_ips
from tuneloop.data.pii_numbers import find_bank_cards, find_id_cards, find_phones, luhn_ok, valid_cn_id
from tuneloop.data.pii_secrets import find_secrets
from tuneloop.data.stats import Stats
from tuneloop.data.step import Step

__all__ = ["DETECTORS", "PIIStep", "Span", "find_pii", "find_spans", "luhn_ok", "redact", "valid_cn_id"]

_HAS_DIGIT = frozenset("0123456789")


class Span(NamedTuple):
    start: int
    end: int
    type: str


@dataclass(frozen=True)
class Detector:
    type: str
    find: Callable[[str], Iterator[tuple[int, int]]]
    needs_digit: bool = True  # cheap pre-check: most text has no digit-bearing token at all


_FINDERS = {
    "secret": Detector("secret", find_secrets, needs_digit=False),
    "email": Detector("email", find_emails, needs_digit=False),
    "id_card": Detector("id_card", find_id_cards),
    "bank_card": Detector("bank_card", find_bank_cards),
    "phone": Detector("phone", find_phones),
    "ip": Detector("ip", find_ips),
}
DETECTORS = tuple(_FINDERS[t] for t in PII_TYPES)  # priority order for overlaps


def find_spans(text: str, types: Iterable[str] | None = None) -> list[Span]:
    """Non-overlapping spans of PII in `text`, in text order."""
    wanted = None if types is None else set(types)
    digit = not _HAS_DIGIT.isdisjoint(text)
    found: list[tuple[int, int, int, str]] = []  # (priority, -length, start, type) sorts the winners first
    for rank, det in enumerate(DETECTORS):
        if (wanted is not None and det.type not in wanted) or (det.needs_digit and not digit):
            continue
        found.extend((rank, start - end, start, det.type) for start, end in det.find(text))
    if not found:
        return []
    taken: list[Span] = []
    for _, neg_len, start, kind in sorted(found):
        end = start - neg_len
        if all(end <= s.start or start >= s.end for s in taken):
            taken.append(Span(start, end, kind))
    return sorted(taken)


def _replace(text: str, spans: list[Span]) -> str:
    parts, pos = [], 0
    for s in spans:
        parts += (text[pos : s.start], f"<{s.type.upper()}>")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)


def redact(text: str, types: Iterable[str] | None = None, found: list[tuple[str, str]] | None = None) -> str:
    """`text` with each PII item replaced by its typed placeholder, e.g. <EMAIL>; (type, match) go to `found`."""
    spans = find_spans(text, types)
    if not spans:
        return text
    if found is not None:
        found.extend((s.type, text[s.start : s.end]) for s in spans)
    return _replace(text, spans)


def find_pii(text: str, types: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(type, matched text) for every PII item in `text`, in text order."""
    return [(s.type, text[s.start : s.end]) for s in find_spans(text, types)]


def shape(value: str) -> str:
    """What a match looked like without what it said: letters -> x/X, digits -> 0, the rest kept."""
    return "".join("0" if c.isdigit() else ("X" if c.isupper() else "x") if c.isalpha() else c for c in value)


def masked_context(text: str, spans: list[Span], i: int, width: int = 32) -> str:
    """`spans[i]` in its context for the manifest: the match as [TYPE:shape], other PII as placeholders."""
    s = spans[i]
    lo, hi = max(0, s.start - width), min(len(text), s.end + width)
    parts, pos = [], lo
    for j, o in enumerate(spans):
        if o.end <= lo or o.start >= hi:
            continue
        parts.append(text[pos : max(pos, o.start)])
        parts.append(
            f"[{o.type.upper()}:{shape(text[o.start : o.end])}]" if j == i else f"<{o.type.upper()}>"
        )
        pos = max(pos, o.end)
    parts.append(text[pos:hi] if pos < hi else "")
    out = "".join(parts).replace("\n", " ")
    return ("…" if lo else "") + out + ("…" if hi < len(text) else "")


class PIIStep(Step):
    """redact: placeholders; drop: remove documents with PII; report: count and show, change nothing."""

    name = "pii"

    def __init__(self, cfg: PIIConfig):
        self.cfg = cfg

    def process(self, doc: Doc, stats: Stats) -> Doc | None:
        if self.cfg.mode == "off":
            return doc
        counts: Counter[str] = Counter()
        field = 0

        def one(text: str) -> str:
            nonlocal field
            spans = find_spans(text, self.cfg.types)
            field += 1
            for i, s in enumerate(spans):
                counts[s.type] += 1
                key = [doc.file, doc.index, field, s.start]
                if stats.pii_example_wanted(s.type, key, self.cfg.examples):
                    context = masked_context(text, spans, i)
                    stats.add_pii_example(s.type, key, doc.id, context, self.cfg.examples)
            return _replace(text, spans) if spans and self.cfg.mode == "redact" else text

        doc.map_text(one)
        stats.pii.update(counts)
        if counts and self.cfg.mode == "drop":
            stats.drop("pii.contains_pii")
            return None
        return doc
