"""Parsers for files that are one document each: plain text, Markdown and HTML (main text only)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

SkipFn = Callable[[int | None, str], None]
_BLANKS = re.compile(r"\n{3,}")
_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg")


def text_document(stream: BinaryIO, encoding: str, skip: SkipFn) -> Iterator[tuple[int, str]]:
    data = stream.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        skip(data[: e.start].count(b"\n") + 1, f"cannot decode as {encoding}: {e.reason} at byte {e.start}")
        return
    yield 1, text.removeprefix("\ufeff")


def html_document(stream: BinaryIO, encoding: str, skip: SkipFn, extractor: str) -> Iterator[tuple[int, str]]:
    for line, html in text_document(stream, encoding, skip):
        text = _trafilatura(html) if extractor == "trafilatura" else None
        text = text or _plain(html)
        if not text.strip():
            skip(None, "HTML page has no main text")
            return
        yield line, text


def _trafilatura(html: str) -> str | None:
    try:
        import trafilatura
    except ImportError:
        return None  # the plain extractor below still drops navigation and scripts
    return trafilatura.extract(
        html, include_comments=False, include_tables=True, favor_recall=True, deduplicate=False
    )


def _plain(html: str) -> str:
    """Text of the page without scripts, styles and navigation chrome (lxml, or a regex fallback)."""
    try:
        import lxml.html
    except ImportError:
        return _regex_plain(html)
    try:
        root = lxml.html.fromstring(html)
    except Exception:  # lxml raises several types on junk; the regex path is always safe
        return _regex_plain(html)
    for bad in root.xpath("|".join(f"//{t}" for t in _DROP)):
        bad.drop_tree()
    for block in root.xpath("//p|//div|//br|//li|//h1|//h2|//h3|//h4|//tr|//section|//article"):
        block.tail = "\n\n" + (block.tail or "")
    return _BLANKS.sub("\n\n", root.text_content()).strip()


def _regex_plain(html: str) -> str:
    html = re.sub(r"(?is)<(script|style|nav|header|footer)\b.*?</\1>", " ", html)
    return _BLANKS.sub("\n\n", re.sub(r"<[^>]+>", "\n", html)).strip()
