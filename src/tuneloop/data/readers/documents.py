"""Parsers for files that are one document each: plain text, Markdown and HTML (main text only)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

SkipFn = Callable[[int | None, str], None]
_BLANKS = re.compile(r"\n{3,}")
_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg")


def text_document(
    stream: BinaryIO, encoding: str, skip: SkipFn, max_bytes: int | None = None
) -> Iterator[tuple[int, str]]:
    """The file as one document; a file over `max_bytes` is streamed as documents of whole paragraphs."""
    data = stream.read(max_bytes + 1) if max_bytes else stream.read()
    if max_bytes and len(data) > max_bytes and not encoding.startswith(("utf-16", "utf-32")):
        yield from _paragraph_documents(data, stream, encoding, skip, max_bytes)
        return
    data += stream.read() if max_bytes else b""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        skip(data[: e.start].count(b"\n") + 1, f"cannot decode as {encoding}: {e.reason} at byte {e.start}")
        return
    yield 1, text.removeprefix("\ufeff")


def _paragraph_documents(
    head: bytes, stream: BinaryIO, encoding: str, skip: SkipFn, max_bytes: int
) -> Iterator[tuple[int, str]]:
    """Documents of consecutive paragraphs, cut at a blank line once past `max_bytes` // 8 (bounded memory)."""
    target = max(max_bytes // 8, 1)
    lines = _join_lines(head, stream)
    enc = "utf-8" if encoding == "utf-8-sig" else encoding
    buf: list[str] = []
    size, start = 0, 1
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode(enc)
        except UnicodeDecodeError as e:
            skip(n, f"cannot decode as {encoding}: {e.reason} at byte {e.start}")
            continue
        if not line.strip() and size >= target:
            yield start, "".join(buf).removeprefix("\ufeff")
            buf, size, start = [], 0, n + 1
            continue
        buf.append(line)
        size += len(raw)
    if "".join(buf).strip():
        yield start, "".join(buf).removeprefix("\ufeff")


def _join_lines(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    """Lines of `head` followed by the rest of `stream`, re-joining the line cut at the seam."""
    parts = head.splitlines(keepends=True)
    tail = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""
    yield from parts
    for i, line in enumerate(stream):
        yield tail + line if i == 0 else line
        tail = b""
    if tail:
        yield tail


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
