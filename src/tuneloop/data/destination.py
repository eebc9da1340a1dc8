"""The output location of `data prepare` while it is written: shards go to a temporary prefix, the
commit moves them into place and writes `manifest.json` last.

An interrupted or failed run leaves at most the temporary prefix (`.tuneloop-tmp-*`, removed on a
clean failure) and never a manifest, so nothing half-written looks like a dataset; the previous
dataset in the same place stays readable until the commit starts. Any fsspec URL works: the shard
writers (local worker processes or Spark executors) each write their own shards there directly.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tuneloop.data.layout import MANIFEST, SPLITS, join, shard_name, storage_error, url_to_fs
from tuneloop.data.output import describe, write_parquet
from tuneloop.errors import TuneloopError

TMP_PREFIX = ".tuneloop-tmp-"
_LEGACY = ("train.jsonl", "val.jsonl", "train.parquet", "val.parquet")


@dataclass(frozen=True)
class Destination:
    """`url` (folder or fsspec URL) and the temporary prefix inside it; picklable for Spark tasks."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    tmp: str = field(default_factory=lambda: TMP_PREFIX + uuid.uuid4().hex[:12])

    @property
    def local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def fs(self) -> tuple[Any, str]:
        return url_to_fs(self.url, self.storage_options)  # fsspec caches the instance

    def start(self) -> None:
        """Create the temporary prefix with a probe object, so a missing bucket, missing credentials
        or a read-only location fail now, naming the URL, and not after the inputs were processed."""
        fs, root = self.fs()
        try:
            if self.local:
                fs.makedirs(posixpath.join(root, self.tmp), exist_ok=True)
            fs.pipe_file(posixpath.join(root, self.tmp, ".started"), b"")
        except Exception as e:
            raise storage_error(self.url, e) from None

    def write_shard(
        self, split: str, n: int, lines: Iterable[str], kind: str, parquet: bool
    ) -> dict[str, Any]:
        """Write shard `n` of `split` (JSONL lines without newline) and its Parquet copy; returns
        their `outputs` entries. Remote shards are built in a local temporary folder, then uploaded."""
        fs, root = self.fs()
        name = shard_name(split, n)
        if self.local:
            jsonl = Path(root) / self.tmp / name
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            return _write_files(jsonl, name, lines, kind, parquet)
        with tempfile.TemporaryDirectory(prefix="tuneloop-shard-") as tmpdir:
            jsonl = Path(tmpdir) / Path(name).name
            outputs = _write_files(jsonl, name, lines, kind, parquet)
            try:
                for out_name in outputs:
                    local = jsonl.with_suffix(Path(out_name).suffix)
                    fs.put_file(str(local), posixpath.join(root, self.tmp, out_name))
            except Exception as e:
                raise storage_error(join(self.url, self.tmp, name), e) from None
            return outputs

    def commit(self, manifest: dict[str, Any]) -> None:
        """Replace whatever dataset was here with the new shards, then write the manifest (last)."""
        fs, root = self.fs()
        fs.invalidate_cache()  # the shards were written by other processes (workers, executors)
        try:
            _remove(fs, posixpath.join(root, MANIFEST))  # first: from here on, no dataset looks complete
            for old in (*_LEGACY, *SPLITS):
                _remove(fs, posixpath.join(root, old), recursive=True)
            for name in manifest["outputs"]:
                dest = posixpath.join(root, name)
                if self.local:
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                fs.mv(posixpath.join(root, self.tmp, name), dest)
            text = json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
            fs.pipe_file(posixpath.join(root, MANIFEST), text.encode("utf-8"))
        except TuneloopError:
            raise
        except Exception as e:
            raise storage_error(self.url, e) from None
        self.abort()

    def abort(self) -> None:
        """Remove the temporary prefix (best effort: a failure to clean up must not hide the real error)."""
        try:
            fs, root = self.fs()
            fs.invalidate_cache()
            _remove(fs, posixpath.join(root, self.tmp), recursive=True)
        except Exception:
            pass


def write_split(
    dest: Destination, split: str, lines: Iterable[str], shard_rows: int, kind: str, parquet: bool
) -> dict[str, Any]:
    """Cut a split's rows (canonical order) into shards of `shard_rows` rows, streamed: one line in
    memory at a time. A split without rows gets one empty shard (its Parquet file keeps the schema)."""
    it = iter(lines)
    outputs: dict[str, Any] = {}
    pending, n = next(it, None), 0
    while n == 0 or pending is not None:

        def shard(head: str | None = pending) -> Iterator[str]:
            if head is not None:
                yield head
                yield from islice(it, shard_rows - 1)

        outputs.update(dest.write_shard(split, n, shard(), kind, parquet))
        n += 1
        pending = next(it, None)
    return outputs


def _write_files(jsonl: Path, name: str, lines: Iterable[str], kind: str, parquet: bool) -> dict[str, Any]:
    with jsonl.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    outputs = {name: describe(jsonl)}
    if parquet:
        pq = write_parquet(jsonl, kind)
        outputs[name.rsplit(".", 1)[0] + ".parquet"] = describe(pq)
    return outputs


def _remove(fs: Any, path: str, recursive: bool = False) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
