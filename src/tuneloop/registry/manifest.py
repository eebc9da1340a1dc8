"""The checksum manifest stored with every registry version, and its verification on load.

The manifest lists the sha256 and size of every stored file. Its own sha256 is kept as a tag on
the model version (in the database, not next to the files), so a tampered file cannot be hidden by
also editing the manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.store import sha256_file

MANIFEST = "tuneloop-manifest.json"


def build_manifest(root: Path) -> dict[str, Any]:
    """{"files": {relative path: {"sha256", "size"}}} for every file below `root` but the manifest."""
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return {"format": 1, "files": files}


def write_manifest(root: Path) -> str:
    """Write the manifest into `root`; returns its sha256 (the digest recorded as a tag)."""
    data = json.dumps(build_manifest(root), indent=2, sort_keys=True).encode()
    (root / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: Path, expected_sha256: str, where: str) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise TuneloopError(f"{where}: the checksum manifest {MANIFEST} is missing", hint=_REPAIR)
    if sha256_file(path) != expected_sha256:
        raise TuneloopError(
            f"{where}: checksum mismatch in {MANIFEST} (it does not match the digest recorded in the registry)",
            hint=_REPAIR,
        )
    return json.loads(path.read_text())


def verify(root: Path, expected_sha256: str, where: str) -> dict[str, Any]:
    """Check every file against the manifest; raise naming the first bad file. Returns the manifest."""
    manifest = read_manifest(root, expected_sha256, where)
    expected: dict[str, dict[str, Any]] = manifest["files"]
    for rel, info in expected.items():
        path = root / rel
        if not path.is_file():
            raise TuneloopError(f"{where}: file {rel} is missing", hint=_REPAIR)
        if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
            raise TuneloopError(
                f"{where}: checksum mismatch in {rel} (expected sha256 {info['sha256'][:12]}…)", hint=_REPAIR
            )
    extra = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    extra = [rel for rel in extra if rel != MANIFEST and rel not in expected]
    if extra:
        raise TuneloopError(f"{where}: unexpected file {extra[0]} (not in the manifest)", hint=_REPAIR)
    return manifest


_REPAIR = (
    "the stored artifact was changed or corrupted after registration; do not use it. "
    "Register the model again from its run folder, or restore the artifact store from a backup"
)
