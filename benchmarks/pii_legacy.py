"""The PII detectors as they were before issue 25 (commit 3267be2), kept verbatim for before/after
measurements in benchmarks/pii_bench.py and benchmarks/data_prepare.py. Not used by tuneloop.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from tuneloop.data.pii_numbers import luhn_ok, valid_cn_id  # unchanged by the rewrite


def _card_ok(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ip_ok(match: str) -> bool:
    try:
        ipaddress.ip_address(match)
    except ValueError:
        return False
    return True


_HAS_DIGITS = re.compile(r"[0-9][0-9 ().-]{5,}[0-9]").search
_HAS_ADDRESS = re.compile(r"[0-9]\.[0-9]|[0-9A-Fa-f]:[0-9A-Fa-f]*:").search


@dataclass(frozen=True)
class Detector:
    type: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = lambda _m: True
    # a cheap test that must pass before the full pattern runs (most text has no PII at all)
    maybe: Callable[[str], object] = lambda _t: True

    @property
    def placeholder(self) -> str:
        return f"<{self.type.upper()}>"


# Order matters: IDs (18 digits) before cards, cards (13-19) before phones (11), so a number is claimed once.
DETECTORS = (
    Detector(
        "email",
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        maybe=lambda t: "@" in t,
    ),
    Detector(
        "id_card",
        re.compile(
            r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
        ),
        valid_cn_id,
        _HAS_DIGITS,
    ),
    Detector(
        "bank_card",
        re.compile(r"(?<![0-9])[0-9]{4}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}(?![0-9])"),
        _card_ok,
        _HAS_DIGITS,
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![0-9+])(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"  # Chinese mobile
            r"|(?<![0-9A-Za-z])(?:\+|00)[1-9][0-9]{0,2}[ .-]?(?:\(?[0-9]{1,4}\)?[ .-]?){1,4}[0-9]{2,4}(?![0-9])"  # international
            r"|(?<![0-9])\(?[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}(?![0-9])"  # North American
        ),
        maybe=_HAS_DIGITS,
    ),
    Detector(
        "ip",
        re.compile(
            r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9.])|(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"
        ),
        _ip_ok,
        _HAS_ADDRESS,
    ),
)


def find_pii(text: str, types: list[str] | None = None) -> list[tuple[str, str]]:
    """(type, matched text) for every PII item in `text`, in detection order."""
    found: list[tuple[str, str]] = []
    redact(text, types, found)
    return found


def _needs(text: str) -> tuple[bool, bool]:
    """(any digit, any ':' or '.'): every detector but email needs a digit, except IPv6, which needs ':'."""
    digit = any(d in text for d in "0123456789")  # ten memchr scans beat one regex scan
    return digit, ":" in text or (digit and "." in text)


def redact(text: str, types: list[str] | None = None, found: list[tuple[str, str]] | None = None) -> str:
    """`text` with each PII item replaced by its typed placeholder, e.g. <EMAIL>."""
    digit, address = _needs(text)
    memo: dict[Callable[[str], object], tuple[str, bool]] = {}
    for det in DETECTORS:
        if types is not None and det.type not in types:
            continue
        # the cheap tests first; placeholders (<EMAIL> ...) add no digit, ':' or '.', so `_needs` holds
        if (det.maybe is _HAS_DIGITS and not digit) or (det.maybe is _HAS_ADDRESS and not address):
            continue
        seen = memo.get(det.maybe)
        if seen is None or seen[0] is not text:  # three detectors share _HAS_DIGITS: scan once per text
            seen = memo[det.maybe] = (text, bool(det.maybe(text)))
        if not seen[1]:
            continue

        def sub(m: re.Match[str], det: Detector = det) -> str:
            if not det.valid(m.group()):
                return m.group()
            if found is not None:
                found.append((det.type, m.group()))
            return det.placeholder

        text = det.pattern.sub(sub, text)
    return text
