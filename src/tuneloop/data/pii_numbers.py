"""Number-shaped PII: Chinese resident IDs, bank cards and phone numbers, as standalone tokens only.

Each finder yields (start, end) spans of `text`. A candidate must be a whole token: never preceded or
followed by a letter, a digit, '_' or a decimal point followed by digits, so the digits inside floats,
exponents, hashes, UUIDs, hex, version strings and timestamps are never considered. Then it must be
valid, not merely shaped right: an ID passes the GB 11643 checksum and has a real birth date and
province; a card has an issuer prefix, a length that issuer uses and the Luhn checksum; a phone
number is validated by `phonenumbers` (Google's libphonenumber metadata) for the region its format
implies, and weakly formatted ones (space or dot separated) need a phone word nearby.
Digit boundaries use explicit ASCII classes, not \\b, which fails between a CJK character and a digit.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator

import phonenumbers

Span = tuple[int, int]

# not part of a longer token: letters, digits, '_', and the joiners of versions, paths, ranges, ids;
# not an amount either (a currency sign before, a unit after: ¥13800000000, 13800000000元)
_BEFORE = r"(?<![A-Za-z0-9_./#+\-@$€£¥￥§&%])"
_AFTER = r"(?![A-Za-z0-9_%％元万亿千百块美円]|[.:\-/][0-9])"

# every number detector's match lies inside such a run (plus a leading '+' or '(' and a trailing 'X'):
# one scan for runs, which starts with a plain character class and so is fast, then the exact
# patterns (whose leading look-behinds would make a whole-text scan ~4x slower) only around runs
_RUN = re.compile(r"[0-9][0-9 ()\-.]{6,}[0-9]")
_runs_cache: tuple[str, list[tuple[int, int]]] = ("", [])


def digit_windows(text: str) -> list[tuple[int, int]]:
    """(lo, hi) around each run of 8+ digits and separators; `finditer(text, lo, hi)` sees the real
    text on the left (look-behinds look before `lo`) and 4 characters past the run on the right."""
    global _runs_cache
    cached = _runs_cache  # one read: safe when the gateway's threads share this module
    if cached[0] is text:  # the three number detectors share one scan per text
        return cached[1]
    n = len(text)
    windows = [(max(0, m.start() - 2), min(n, m.end() + 4)) for m in _RUN.finditer(text)]
    _runs_cache = (text, windows)
    return windows


# ---------------------------------------------------------------- Chinese resident ID (GB 11643)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# province-level codes (the first two digits)
_PROVINCES = frozenset(
    [
        "11",
        "12",
        "13",
        "14",
        "15",
        "21",
        "22",
        "23",
        "31",
        "32",
        "33",
        "34",
        "35",
        "36",
        "37",
        "41",
        "42",
        "43",
        "44",
        "45",
        "46",
        "50",
        "51",
        "52",
        "53",
        "54",
        "61",
        "62",
        "63",
        "64",
        "65",
        "71",
        "81",
        "82",
    ]
)
_ID = re.compile(_BEFORE + r"[1-8][0-9]{16}[0-9Xx]" + _AFTER)


def valid_cn_id(number: str) -> bool:
    """GB 11643-1999: the 18th character is the mod-11 checksum of the first 17 digits."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _plausible_id(number: str) -> bool:
    """Checksum, province and a real birth date between 1900 and today's century."""
    if number[:2] not in _PROVINCES or not valid_cn_id(number):
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2099


def find_id_cards(text: str) -> Iterator[Span]:
    for lo, hi in digit_windows(text):
        for m in _ID.finditer(text, lo, hi):
            if _plausible_id(m.group()):
                yield m.span()


# ---------------------------------------------------------------- bank cards

_CARD = re.compile(
    _BEFORE
    + r"(?<![0-9][ -])"  # not the tail of a longer run of digit groups
    + r"(?:[0-9]{13,19}"  # unseparated
    + r"|[0-9]{4}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{4}(?:(?P=s)[0-9]{3})?"  # 4-4-4-4(-3)
    + r"|[0-9]{4}(?P<t>[ -])[0-9]{6}(?P=t)[0-9]{5})"  # Amex 4-6-5
    + _AFTER
    + r"(?![ -][0-9])"  # nor the head of one
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network whose issuer prefix (IIN) and length fit `digits`, or None."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4" and n in (13, 16):  # 19-digit Visa exists but is rare; numeric ids are not
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    if (four == 6011 or 644 <= int(digits[:3]) <= 649 or two == 65) and 16 <= n <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= int(digits[:3]) <= 305 or two in (36, 38, 39)) and 14 <= n <= 16:
        return "diners"
    return None


def _card_ok(match: str) -> bool:
    digits = match.replace(" ", "").replace("-", "")
    return len(set(digits)) > 1 and card_issuer(digits) is not None and luhn_ok(digits)


_CARD_WORDS = re.compile(
    r"(?i)card|visa|master|amex|unionpay|credit|debit|\bpan\b|\bcc|payment|卡|银联|信用|借记|支付"
)


def find_bank_cards(text: str) -> Iterator[Span]:
    for lo, hi in digit_windows(text):
        for m in _CARD.finditer(text, lo, hi):
            start = m.start()
            if start and text[start - 1] in "=:" and not _CARD_WORDS.search(text, max(0, start - 40), start):
                continue  # `id=4111111111111111`: a number under a key is a card only under a card key
            if _card_ok(m.group()):
                yield m.span()


# ---------------------------------------------------------------- phone numbers

_PHONE_WORDS = re.compile(  # whole words (not `string`, `recall`), or the end of a camelCase name
    r"(?:(?<![A-Za-z])(?i:phones?|tel|telephone|mobile|cell|cellphone|call|fax|hotline|whatsapp|sms|contact|"
    r"dial)|Phone|Tel|Mobile|Fax)(?![a-z])|电话|手机|联系|致电|热线|传真|拨打"
)
_CN_MOBILE = re.compile(
    _BEFORE + r"(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[0-9]{8}|(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4})" + _AFTER
)
_CN_LANDLINE = re.compile(
    _BEFORE + r"(?:(?:\+|00)86[ -]?)?(?:\(0[1-9][0-9]{1,2}\) ?|0[1-9][0-9]{1,2}-)[2-9][0-9]{6,7}" + _AFTER
)
# North American: (415) 555-0132, 415-555-0132, +1 415 555 0132; dots or spaces only near a phone word
_NANP = re.compile(
    _BEFORE
    + r"(?:(?:\+1|1)(?P<c>[ .-]))?"
    + r"(?:\([2-9][0-9]{2}\) ?(?P<p>)|[2-9][0-9]{2}(?P<s>[ .-]))"
    + r"[2-9][0-9]{2}(?(s)(?P=s)|[.-])[0-9]{4}"
    + _AFTER
)
# other countries: international format only (+CC or 00CC); groups of digits, optional (0) or (area)
# E.164 (+442083661177), or groups that a separator or a ')' starts: one way to split the digits,
# so a long run of figures costs no backtracking
_INTL = re.compile(
    _BEFORE
    + r"(?:\+|00)(?:[1-9][0-9]{6,14}"
    + r"|[1-9][0-9]{0,2}(?:[ .-]\(?[0-9]{1,8}\)?|\([0-9]{1,8}\))(?:(?:[ .-]|(?<=\)))\(?[0-9]{1,8}\)?){1,6})"
    + _AFTER
)


def _phone_word_near(text: str, start: int) -> bool:
    return _PHONE_WORDS.search(text, max(0, start - 40), start) is not None


def _valid_phone(number: str, region: str | None) -> bool:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def _intl_span(m: re.Match[str]) -> Span | None:
    """The longest valid number that the candidate starts with (it may run into the next figures)."""
    start, end = m.span()
    cand = m.group()
    plus = "+" + cand[2:] if cand.startswith("00") else cand
    while sum(c.isdigit() for c in plus) >= 8:
        if _valid_phone(plus, None):
            return start, end
        cut = max(plus.rfind(" "), plus.rfind("-"), plus.rfind("."))
        if cut <= 3:
            return None
        end -= len(plus) - cut
        plus = plus[:cut].rstrip(" .-(")
    return None


def _key_value(text: str, start: int) -> bool:
    """`read_bytes=18626220032`: a number right after '=' or ':' is a phone only under a phone key."""
    return start > 0 and text[start - 1] in "=:" and not _phone_word_near(text, start)


def find_phones(text: str) -> Iterator[Span]:
    for lo, hi in digit_windows(text):
        for pattern, region in ((_CN_MOBILE, "CN"), (_CN_LANDLINE, "CN")):
            for m in pattern.finditer(text, lo, hi):
                if not _key_value(text, m.start()) and _valid_phone(m.group(), region):
                    yield m.span()
        for m in _NANP.finditer(text, lo, hi):
            weak = m.group("p") is None and m.group("s") != "-"  # 415.555.0132 / 415 555 0132
            if (weak and not _phone_word_near(text, m.start())) or _key_value(text, m.start()):
                continue
            if _valid_phone(m.group(), "US"):
                yield m.span()
        for m in _INTL.finditer(text, lo, hi):
            span = None if _key_value(text, m.start()) else _intl_span(m)
            if span:
                yield span
