"""The dataset layout: where a prepared dataset's shards live and how a reader finds them.

    <out>/manifest.json                 written last: a folder without it is not a dataset
    <out>/train/part-00000.jsonl        rows in canonical order, `shard_rows` rows per shard
    <out>/train/part-00000.parquet      the same rows as Parquet (unless parquet=false)
    <out>/val/part-00000.jsonl ...

`<out>` is a local folder or any fsspec URL (s3://bucket/prefix, gs://, memory://). Shard k of a
split holds its rows [k * shard_rows, (k + 1) * shard_rows), so the shard files (and the manifest)
do not depend on the engine or the worker count. A split without rows gets one empty shard, so its
Parquet file still carries the schema.

Readers take a dataset folder or URL (its manifest lists the shards in order) and also the single
file layout that hand-made and feedback-loop datasets use (`train.jsonl` / `val.jsonl` in a folder).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError, missing_extra

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def shard_name(split: str, n: int, ext: str = "jsonl") -> str:
    return f"{split}/part-{n:05d}.{ext}"


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it); s3:// gets the endpoint from AWS_ENDPOINT_URL if set."""
    try:
        import fsspec  # also installed by huggingface_hub, so `train` has it without the data extra
    except ImportError:
        raise missing_extra("fsspec", "data") from None

    opts = dict(storage_options or {})
    if url.split("://", 1)[0] in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        opts.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ImportError as e:
        raise TuneloopError(
            f"'{url}' needs an fsspec driver: {e}", hint="pip install 'tuneloop[data]' (s3fs for s3://)"
        ) from None


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URL (URLs always use '/')."""
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


@dataclass(frozen=True)
class Split:
    """One split of a dataset: its JSONL files in order (one file in the single-file layout)."""

    name: str
    files: tuple[str, ...]
    rows: int | None  # from the manifest; None when unknown (single-file layout)
    storage_options: dict[str, Any] | None = None
    location: str | None = None  # the dataset folder/URL of a sharded dataset
    fingerprint: str | None = None  # the manifest's
    file_rows: tuple[int | None, ...] | None = None  # rows per file, from the manifest's outputs
    bytes: int | None = None  # the files' size together, from the manifest's outputs

    def lines(self) -> Iterator[tuple[str, int, str]]:
        """(file, line number, line) of the non-blank lines, file by file, streamed."""
        for url in self.files:
            yield from _file_lines(url, self.storage_options)

    def file_lines(self, index: int) -> Iterator[tuple[str, int, str]]:
        """(file, line number, line) of file `index` alone, streamed (a streaming reader picks files)."""
        return _file_lines(self.files[index], self.storage_options)

    def __str__(self) -> str:
        """The dataset location for shards (what `tuneloop eval` and lineage take), else the file."""
        return self.location or self.files[0]


def open_split(location: str, split: str, storage_options: dict[str, Any] | None = None) -> Split | None:
    """The `split` of the dataset at `location` (folder or URL); None if the dataset has no such rows.

    A manifest with shards wins; otherwise `<split>.jsonl` in the folder. A folder with shards but
    no manifest is an unfinished (or failed) `data prepare`, and says so.
    """
    fs, root = url_to_fs(location, storage_options)
    manifest = _read_manifest(fs, root, location)
    if manifest is not None and "shards" in manifest:
        names = manifest["shards"].get(split, [])
        rows = manifest["counts"].get(f"{split}_rows")
        if not rows and split != "train":
            return None
        files = tuple(join(location, n) for n in names)
        outputs = manifest.get("outputs") or {}
        file_rows = tuple(outputs.get(n, {}).get("rows") for n in names)
        sizes = [outputs.get(n, {}).get("bytes") for n in names]
        size = sum(sizes) if all(isinstance(b, int) for b in sizes) else None
        return Split(
            split, files, rows, storage_options, location, manifest.get("fingerprint"), file_rows, size
        )
    single = join(location, f"{split}.jsonl")
    if _exists(fs, posixpath.join(root, f"{split}.jsonl"), location):
        return Split(split, (single,), None, storage_options)
    if _exists(fs, posixpath.join(root, split), location):
        raise TuneloopError(
            f"dataset '{location}' has {split}/ shards but no {MANIFEST}: an unfinished or failed "
            "`tuneloop data prepare` (the manifest is written last)",
            hint="rerun `tuneloop data prepare` into this folder",
        )
    return None


def sharded_split(location: str | os.PathLike, split: str) -> Split | None:
    """`open_split` for a sharded dataset (a URL, or a folder whose manifest lists shards), else None,
    so callers keep their own handling of plain files and single-file folders."""
    location = str(location)
    if not is_url(location):
        manifest = os.path.join(location, MANIFEST)
        if not os.path.isfile(manifest) or '"shards"' not in Path(manifest).read_text(encoding="utf-8"):
            return None
    found = open_split(location, split)
    return found if found is not None else Split(split, (), 0, location=location)


def _read_manifest(fs: Any, root: str, location: str) -> dict[str, Any] | None:
    path = posixpath.join(root, MANIFEST)
    if not _exists(fs, path, location):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except ValueError as e:
        raise TuneloopError(f"{join(location, MANIFEST)} is not valid JSON: {e}") from None


def _exists(fs: Any, path: str, location: str) -> bool:
    try:
        return bool(fs.exists(path))
    except Exception as e:
        raise storage_error(location, e) from None


def storage_error(url: str, e: BaseException) -> TuneloopError:
    """A storage failure (no such bucket, no credentials, endpoint down) as an error naming the URL."""
    name = type(e).__name__
    text = str(e) or name
    if "credential" in text.lower() or name in ("NoCredentialsError", "PartialCredentialsError"):
        hint = "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile), or storage_options"
    elif isinstance(e, FileNotFoundError) or "NoSuchBucket" in text:
        hint = "check the bucket name and prefix (the bucket must exist)"
    elif isinstance(e, PermissionError) or "AccessDenied" in text:
        hint = "the credentials in use may not read/write this prefix"
    else:
        hint = "check the URL, the endpoint (AWS_ENDPOINT_URL / endpoint_url) and the network"
    return TuneloopError(f"cannot use '{url}': {name}: {text}", hint=hint)


def _file_lines(url: str, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, int, str]]:
    fs, path = url_to_fs(url, storage_options)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise TuneloopError(
            f"shard '{url}' is listed in the manifest but missing",
            hint="the dataset was changed after it was written: rerun `tuneloop data prepare`",
        ) from None
    except Exception as e:
        raise storage_error(url, e) from None
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise TuneloopError(
                    f"{url}:{number}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)",
                    hint="JSONL shards are UTF-8: rerun `tuneloop data prepare`",
                ) from None
            if line.strip():
                yield url, number, line
