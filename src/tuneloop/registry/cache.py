"""Local copies of registry versions under TUNELOOP_HOME/registry, verified on every load.

A download lands in a staging folder, is checked against the manifest whose digest the registry
recorded, and only then is renamed into place; a cached copy that fails the check is discarded
and fetched again, so a half-finished download or a changed cache never gets loaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from tuneloop import paths
from tuneloop.errors import TuneloopError
from tuneloop.registry import manifest

log = logging.getLogger("tuneloop.registry")


def root() -> Path:
    path = paths.home() / "registry"
    path.mkdir(parents=True, exist_ok=True)
    return path


def folder(server_key: str, name: str, version: int) -> Path:
    return root() / server_key / name / str(version)


def staging() -> Path:
    """An empty folder on the cache's filesystem, so moving it into place is one rename."""
    base = root() / ".staging"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))


def adopt(stage: Path, target: Path) -> Path:
    """Move a complete staging folder to `target`, replacing whatever was there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(stage, target)
    return target


def fetch(target: Path, manifest_sha: str, label: str, download: Callable[[Path], None]) -> Path:
    """A verified local copy of a version: the cached one if intact, else a fresh download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock"), timeout=3600):
        if target.exists():
            try:
                manifest.verify(target, manifest_sha, f"{label} (cached copy {target})")
                return target
            except TuneloopError as e:
                log.warning("discarding the cached copy of %s: %s", label, e.message)
        stage = staging()
        try:
            download(stage)
            manifest.verify(stage, manifest_sha, label)
            return adopt(stage, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def remove(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
