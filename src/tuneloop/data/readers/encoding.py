"""Guess a byte string's text encoding: BOMs first, then UTF-8, then charset-normalizer.

GBK and GB2312 are read as GB18030 (a strict superset), so every Chinese legacy file decodes the same way.
"""

from __future__ import annotations

import codecs

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHINESE = {"gb2312", "gbk", "gb18030", "hz", "cp936", "euc_cn"}


def bom_encoding(sample: bytes) -> str | None:
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    return None


def detect_encoding(sample: bytes) -> str | None:
    """The encoding of `sample` (the first bytes of a file), or None if it does not look like text."""
    if bom := bom_encoding(sample):
        return bom
    if _is_utf8(sample) or _mostly_utf8(sample):
        return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None:
        return _try("gb18030", sample)
    name = best.encoding.lower()
    return "gb18030" if name in _CHINESE else name


def looks_binary(sample: bytes) -> bool:
    """NUL bytes mean binary, unless a UTF-16/32 BOM explains them."""
    return b"\x00" in sample and bom_encoding(sample) is None


def _is_utf8(sample: bytes) -> bool:
    # final=False: the sample may end in the middle of a multi-byte character
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _mostly_utf8(sample: bytes) -> bool:
    # a UTF-8 file with a few broken lines should stay UTF-8 (the broken lines are skipped one
    # by one); a legacy-encoded file produces invalid sequences at nearly every non-ASCII char
    bad = sample.decode("utf-8", errors="replace").count("\ufffd")
    return bad * 1000 < len(sample) and any(b > 0x7F for b in sample)


def _try(name: str, sample: bytes) -> str | None:
    try:
        codecs.getincrementaldecoder(name)().decode(sample, final=False)
    except UnicodeDecodeError:
        return None
    return name
