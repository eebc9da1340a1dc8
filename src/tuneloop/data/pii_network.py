"""Network identifiers: email addresses and IP addresses, as whole tokens only.

Each finder yields (start, end) spans. An IP candidate must be a whole token (never inside an
identifier, a version string, a `std::vector` or `a::b` path, a slice `x[1::2]` or a classifier
`Language :: Python`), must parse with Python's `ipaddress`, and must name a host: loopback and
unspecified addresses (127.0.0.1, 0.0.0.0, ::1, ::) and netmasks identify nobody and stay. A
dotted quad right after a version or section word (`version 1.2.3.4`, `§ 1.2.3.4`) is a version.
An email's top-level domain must be a real one, so `x@self.weight` (a matrix product) and
`icon@2x.png` stay.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

Span = tuple[int, int]

# ---------------------------------------------------------------- email

# generic and popular TLDs; any two-letter ASCII label is taken as a country code
_GTLDS = frozenset(
    [
        "com",
        "org",
        "net",
        "edu",
        "gov",
        "mil",
        "int",
        "info",
        "biz",
        "name",
        "pro",
        "aero",
        "coop",
        "museum",
        "mobi",
        "jobs",
        "travel",
        "tel",
        "asia",
        "cat",
        "post",
        "io",
        "ai",
        "dev",
        "app",
        "co",
        "me",
        "tech",
        "cloud",
        "online",
        "site",
        "xyz",
        "top",
        "shop",
        "store",
        "blog",
        "email",
        "mail",
        "news",
        "page",
        "live",
        "link",
        "club",
        "group",
        "team",
        "work",
        "world",
        "space",
        "today",
        "solutions",
        "systems",
        "services",
        "company",
        "global",
        "digital",
        "network",
        "agency",
        "email",
        "center",
        "host",
        "website",
        "software",
        "studio",
        "design",
        "media",
        "social",
        "life",
        "love",
        "family",
        "academy",
        "university",
        "school",
        "science",
        "health",
        "bank",
        "finance",
        "capital",
        "consulting",
        "partners",
        "ventures",
    ]
)
_FILE_TLDS = frozenset(
    [
        "js",
        "py",
        "md",
        "ts",
        "rs",
        "sh",
        "gz",
        "bz",
        "xz",
        "so",
        "db",
        "pt",
        "pb",
        "cc",
        "hh",
        "mm",
        "cs",
        "go",
        "kt",
        "pl",
        "pm",
        "rb",
        "vb",
    ]
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})"
    r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9]|:[A-Za-z0-9~/])"  # not `git@github.com:org/repo`
)


def _real_tld(tld: str) -> bool:
    tld = tld.lower()
    return tld in _GTLDS or (len(tld) == 2 and tld not in _FILE_TLDS)


_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")


def _back(text: str, i: int, chars: frozenset[str], limit: int) -> int:
    """The start of the run of `chars` that ends at `i` (at most `limit` long)."""
    stop = max(0, i - limit)
    while i > stop and text[i - 1] in chars:
        i -= 1
    return i


def find_emails(text: str) -> Iterator[Span]:
    # anchored at each '@' (a whole-text scan with the pattern's leading look-behind is ~50x slower)
    at, end = text.find("@"), 0
    while at >= 0:
        start = _back(text, at, _LOCAL_CHARS, 64)
        while start < at and not text[start].isalnum():
            start += 1
        m = _EMAIL.match(text, start) if start >= end else None
        if m:
            end = m.end()  # as a whole-text scan would, resume after any match, valid or not
            if _real_tld(m.group("tld")):
                yield m.span()
        at = text.find("@", max(at + 1, end))


# ---------------------------------------------------------------- IPv4

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(
    r"(?<![A-Za-z0-9_.\-])" + _OCTET + r"(?:\." + _OCTET + r"){3}" + r"(?![A-Za-z0-9_]|[.\-][0-9])"
)
# a dotted quad after these is a version, a section or a requirement, not an address
_NOT_AN_ADDRESS = re.compile(
    r"(?:(?<![A-Za-z])(?i:version|release|v\.?|ver\.?|rev\.?|build|python|section|sec\.|chapter|ch\.|table|"
    r"figure|fig\.|see|step|rule|clause|article|art\.|paragraph|para\.|item|no\.)\s*[:=]?|[=<>~!]=|§|版本[:：]?|第)\s*$"
)


def _host_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_loopback or address.is_unspecified:
        return False
    if address.version == 4:
        first = address.packed[0]
        return first not in (0, 255)  # "this network" (0.x) and netmasks/broadcast (255.x)
    return True


_IPV4_ANCHOR = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.")  # starts with a literal: a fast scan


def find_ipv4(text: str) -> Iterator[Span]:
    end = 0
    for a in _IPV4_ANCHOR.finditer(text):
        start = _back(text, a.start(), _DIGITS, 3)
        m = _IPV4.match(text, start) if start >= end else None
        if m is None or _NOT_AN_ADDRESS.search(text, max(0, start - 12), start):
            continue
        end = m.end()
        if _host_address(ipaddress.IPv4Address(m.group())):
            yield m.span()


# ---------------------------------------------------------------- IPv6

# a run of hex groups and colons (with an optional dotted-quad tail), not touching an identifier
_IPV6 = re.compile(
    r"(?<![A-Za-z0-9_:.])"
    r"(?:[0-9A-Fa-f]{1,4}|(?=::))(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}"
    r"(?![A-Za-z0-9_]|:[A-Za-z0-9_:]|\.[0-9])"
)


def _ipv6_ok(candidate: str) -> bool:
    groups = [g for g in candidate.replace(".", ":").split(":") if g]
    if not any(c.isdigit() for c in candidate):
        return False  # `bad::cafe`, `Self::add`: code, not an address
    if (
        "::" in candidate
        and len(groups) <= 2
        and (len(groups[0]) < 3 or (len(groups[0]) < 4 and groups[0].isdigit()))
    ):
        return False  # slices and ranges: x[1::2], a[10::20], a[100::5]; fe80::1 and 2001::db8 stay addresses
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return _host_address(address)


_IPV6_ANCHOR = re.compile(r":[0-9A-Fa-f]{0,4}:")


def find_ipv6(text: str) -> Iterator[Span]:
    if ":" not in text:
        return
    end = 0
    for a in _IPV6_ANCHOR.finditer(text):
        start = _back(text, a.start(), _HEX_CHARS, 4)
        m = _IPV6.match(text, start) if start >= end else None
        if m is not None:
            end = m.end()
            if _ipv6_ok(m.group()):
                yield m.span()


def find_ips(text: str) -> Iterator[Span]:
    if "." in text:
        yield from find_ipv4(text)
    yield from find_ipv6(text)
