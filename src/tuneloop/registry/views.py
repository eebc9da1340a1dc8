"""Read-only views for the CLI and tools: the model list, one version in full, and a diff of two."""

from __future__ import annotations

import json
from typing import Any

from tuneloop.registry import aliases
from tuneloop.registry.core import Registry
from tuneloop.registry.diff import VersionDiff, diff_versions
from tuneloop.registry.lineage import METRIC_PREFIX
from tuneloop.registry.manifest import MANIFEST


def list_models(reg: Registry) -> list[dict[str, Any]]:
    """Every registered model with its latest version, kind and aliases."""
    rows = []
    for name in reg.names():
        model = reg.model(name)
        versions = reg.versions(name)
        latest = versions[-1] if versions else None
        rows.append(
            {
                "name": name,
                "latest": int(latest.version) if latest else None,
                "versions": len(versions),
                "kind": latest.tags.get("tuneloop.kind") if latest else None,
                "aliases": {a: int(v) for a, v in sorted(dict(model.aliases or {}).items())},
                "description": model.description or "",
                "updated": model.last_updated_timestamp,
            }
        )
    return rows


def describe(reg: Registry, ref: str) -> dict[str, Any]:
    """One version: tags (lineage), metrics, aliases, stored files and the model's alias history."""
    mv = reg.version(ref)
    tags = dict(mv.tags)
    manifest = reg.artifact_text(mv.run_id, MANIFEST)
    files = json.loads(manifest)["files"] if manifest else {}
    return {
        "name": mv.name,
        "version": int(mv.version),
        "ref": f"{mv.name}/{mv.version}",
        "aliases": sorted(mv.aliases or []),
        "description": mv.description or "",
        "created": mv.creation_timestamp,
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": {k: v for k, v in sorted(tags.items()) if not k.startswith(METRIC_PREFIX)},
        "metrics": {
            k.removeprefix(METRIC_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(METRIC_PREFIX)
        },
        "files": {k: v["size"] for k, v in files.items()},
        "alias_history": aliases.load(dict(reg.model(mv.name).tags)),
    }


def diff(reg: Registry, a: str, b: str) -> VersionDiff:
    va, vb = reg.version(a), reg.version(b)
    return diff_versions(
        f"{va.name}/{va.version}",
        f"{vb.name}/{vb.version}",
        dict(va.tags),
        dict(vb.tags),
        reg.artifact_text(va.run_id, "run/config.yaml"),
        reg.artifact_text(vb.run_id, "run/config.yaml"),
    )
