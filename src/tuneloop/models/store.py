"""The model store: one HF folder per model under TUNELOOP_HOME/models, each with a manifest.

A model folder is written under a hidden `.partial-*` name and renamed into place only when it is
complete and its checksums are recorded, so a killed pull never leaves a half-written model that
looks real. The manifest `tuneloop.json` records where the model came from and the sha256 of every
file; `verify` recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from tuneloop import __version__, paths
from tuneloop.errors import ModelNotFoundError, TuneloopError

MANIFEST = "tuneloop.json"
PARTIAL_PREFIX = ".partial-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_folder(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` except the manifest, keyed by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@dataclass
class StoredModel:
    name: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class ModelStore:
    """Models kept in TUNELOOP_HOME/models (or another root, for tests and tools)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.models_dir()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        _check_name(name)
        return self.root / name

    def has(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def get(self, name: str) -> StoredModel:
        if not self.has(name):
            raise ModelNotFoundError(
                f"model '{name}' is not in the store ({self.root})",
                hint=f"available: {', '.join(self.names()) or '(none)'}; `tuneloop models pull NAME` adds one",
            )
        folder = self.path(name)
        return StoredModel(name, folder, json.loads((folder / MANIFEST).read_text()))

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())

    def list(self) -> list[StoredModel]:
        return [self.get(n) for n in self.names()]

    def verify(self, name: str) -> list[str]:
        """Problems found by recomputing every checksum; [] means the model is intact."""
        model = self.get(name)
        expected: dict[str, str] = model.manifest.get("files", {})
        actual = checksum_folder(model.path)
        problems = [f"missing file {f}" for f in expected if f not in actual]
        problems += [
            f"checksum mismatch in {f}" for f in expected if f in actual and actual[f] != expected[f]
        ]
        problems += [f"unexpected file {f}" for f in actual if f not in expected]
        return problems

    def remove(self, name: str) -> None:
        folder = self.get(name).path
        trash = self.root / f"{PARTIAL_PREFIX}rm-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, trash)  # atomic: the model disappears at once, the delete can be slow
        shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialize writers of one model (two concurrent pulls must not race)."""
        with FileLock(str(self.root / f".{name}.lock"), timeout=3600):
            yield

    @contextmanager
    def writer(self, name: str, source: dict[str, Any]) -> Iterator[Path]:
        """Yield an empty staging folder; on success it atomically becomes the model `name`.

        On any exception (or Ctrl-C) the staging folder is deleted and the store is unchanged.
        """
        self.clean_partials()
        staging = self.root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            manifest = {
                "name": name,
                "source": source,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "tuneloop_version": __version__,
                "files": checksum_folder(staging),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            final = self.path(name)
            if final.exists():  # replacing a broken or forced model: move the old one aside first
                old = self.root / f"{PARTIAL_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def clean_partials(self) -> list[Path]:
        """Delete staging folders left by pulls that were killed (their process is gone)."""
        removed = []
        for p in self.root.glob(f"{PARTIAL_PREFIX}*"):
            pid = _pid_of(p.name)
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in ("..",):
        raise TuneloopError(
            f"'{name}' is not a valid model name in the store", hint="use a plain name like my-model"
        )


def _pid_of(folder_name: str) -> int | None:
    parts = folder_name[len(PARTIAL_PREFIX) :].rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
