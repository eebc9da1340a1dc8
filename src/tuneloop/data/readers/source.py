"""Input files: expand files, folders, globs and object-store URLs (fsspec) into a sorted list.

The sorted list is the canonical order of the dataset: its index is the first half of every
document's order key, so every engine and every worker count sees the same order.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

from tuneloop.data.config import InputConfig
from tuneloop.data.layout import url_to_fs
from tuneloop.errors import TuneloopError

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_GLOB = set("*?[")


@dataclass(frozen=True)
class InputFile:
    url: str  # what fsspec opens (a local path or s3://bucket/key)
    name: str  # shown in ids and the manifest: the input as typed + the path below it
    size: int
    gzip: bool
    format: str | None  # None: unsupported extension (reported, not read)


def storage_options(cfg: InputConfig) -> dict[str, Any]:
    opts = dict(cfg.storage_options)
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts.setdefault("endpoint_url", endpoint)
    return opts


def filesystem(url: str, cfg: InputConfig):
    """(fsspec filesystem, path) of an input location: the dataset writer's opener (data/layout.py),
    with the input's credentials for s3://."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return url_to_fs(url, storage_options(cfg) if protocol in ("s3", "s3a") else {})


def list_inputs(
    inputs: list[str], cfg: InputConfig, exclude: str | os.PathLike | None = None
) -> list[InputFile]:
    """Every file under `inputs`, sorted by name and de-duplicated; raises if an input matches nothing.

    Files under `exclude` (the output folder) are left out, so `prepare . --out ./data` can run twice.
    """
    skip_dir = os.path.abspath(exclude) + os.sep if exclude is not None else None
    found: dict[str, InputFile] = {}
    for raw in inputs:
        fs, root = filesystem(raw, cfg)
        protocol = raw.split("://", 1)[0] + "://" if "://" in raw else ""
        paths = _expand(fs, root, raw)
        if not paths:
            raise TuneloopError(f"input '{raw}' matches no files", hint="check the path, glob or bucket")
        for path, size in paths:
            url = protocol + path if protocol else path
            if skip_dir and not protocol and os.path.abspath(path).startswith(skip_dir):
                continue
            found.setdefault(url, _describe(url, _display(raw, root, path, len(paths)), size))
    return sorted(found.values(), key=lambda f: f.name)


def _expand(fs, root: str, raw: str) -> list[tuple[str, int]]:
    if _GLOB & set(raw):
        paths = fs.glob(root, detail=True)
    elif fs.isdir(root):
        paths = fs.find(root, detail=True)
    elif fs.exists(root):
        return [(root, fs.size(root) or 0)]
    else:
        raise TuneloopError(
            f"input '{raw}' does not exist", hint="give a file, a folder, a glob or an s3:// URL"
        )
    return [
        (p, info.get("size") or 0) for p, info in sorted(paths.items()) if info.get("type") != "directory"
    ]


def _display(raw: str, root: str, path: str, count: int) -> str:
    if count == 1 and path.rstrip("/") == root.rstrip("/"):
        return raw
    base = raw.rstrip("/")
    if _GLOB & set(raw):
        base = raw.rsplit("/", 1)[0] if "/" in raw else "."
        root = root.rsplit("/", 1)[0] if "/" in root else ""
        root = root.split("*")[0].rstrip("/")
    rel = path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/") + "/") else path
    return f"{base}/{rel}"


def _describe(url: str, name: str, size: int) -> InputFile:
    lower = url.lower()
    gz = lower.endswith(".gz")
    stem = lower[:-3] if gz else lower
    ext = os.path.splitext(stem)[1]
    return InputFile(url=url, name=name, size=size, gzip=gz, format=FORMATS.get(ext))


class HashingReader(io.RawIOBase):
    """Reads through to `raw` while computing sha256 and the byte count of everything read."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.nbytes += n
        return n

    def finish(self) -> str:
        """Read whatever the parser left (a corrupt tail, a skipped rest) so the checksum covers the file."""
        while chunk := self.raw.read(1 << 20):
            self.sha.update(chunk)
            self.nbytes += len(chunk)
        return self.sha.hexdigest()
