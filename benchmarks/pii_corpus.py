"""Real text available offline, for the PII and data-prepare benchmarks (assembled at run time, never committed).

English: the technical text that ships inside installed Python packages — their METADATA/README
files, Markdown/reST/text docs, and Python source — read from the active environment's
site-packages in sorted order, so the same environment gives the same corpus.
Chinese: the translated messages (zh_CN) in the system's gettext catalogues (/usr/share/locale):
real Chinese technical prose from Debian packages (apt, coreutils, grep, ...). The catalogue
headers (translator names and emails) are skipped, so the corpus holds no PII we know of.
"""

from __future__ import annotations

import gettext
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

DOC_SUFFIXES = (".md", ".rst", ".txt")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _read(path: Path, limit: int = 200_000) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text[:limit] if text.strip() else None


def english_files(kind: str) -> Iterator[Path]:
    """`docs` (METADATA and .md/.rst/.txt files) or `code` (.py files), sorted; no tests, no licenses."""
    root = site_packages()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix().lower()
        if "license" in rel or "copying" in rel or "/tests/" in rel or "/test/" in rel or not path.is_file():
            continue
        if kind == "docs" and (path.name == "METADATA" or path.suffix in DOC_SUFFIXES):
            if path.suffix == ".txt" and path.name in ("RECORD", "top_level.txt", "entry_points.txt"):
                continue
            yield path
        elif kind == "code" and path.suffix == ".py":
            yield path


def english_docs(max_bytes: int, kind: str = "docs") -> list[str]:
    """Documents (one per file, at most 200 KB each) until `max_bytes` of UTF-8 text."""
    out, size = [], 0
    for path in english_files(kind):
        text = _read(path)
        if text is None or len(_CJK.findall(text[:5000])) > 20:
            continue
        out.append(text)
        size += len(text.encode())
        if size >= max_bytes:
            break
    return out


def chinese_messages() -> list[str]:
    """Every zh_CN translation with Chinese in it, catalogue by catalogue, sorted; headers skipped."""
    out = []
    for mo in sorted(Path("/usr/share/locale/zh_CN/LC_MESSAGES").glob("*.mo")):
        try:
            with mo.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except (OSError, UnicodeDecodeError):
            continue
        for key in sorted(catalog, key=str):
            value = catalog[key]
            if key and isinstance(value, str) and _CJK.search(value):
                out.append(value)
    return out


def chinese_docs(max_bytes: int, per_doc: int = 4000) -> list[str]:
    """Consecutive messages joined into documents of about `per_doc` bytes, until `max_bytes`."""
    docs, cur, size, total = [], [], 0, 0
    for msg in chinese_messages():
        cur.append(msg.strip())
        size += len(msg.encode())
        if size >= per_doc:
            docs.append("\n".join(cur))
            total += size
            cur, size = [], 0
            if total >= max_bytes:
                break
    if cur and total < max_bytes:
        docs.append("\n".join(cur))
    return docs
