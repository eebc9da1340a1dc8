"""One function turns any model reference into a local HF folder: `resolve_model(ref)`.

A reference is a local HF folder, a name in the model store, a built-in model name (pulled on
demand when asked), or a hub id when online. Later stages add their own kinds (the registry adds
`NAME@alias` and `NAME/VERSION`) as plugins: a function `(ref, pull) -> ResolvedModel | None`
declared under the entry-point group `tuneloop.model_resolvers` (see pyproject.toml). They are
loaded when the first reference is resolved, so every command that takes a model accepts every kind
of reference, and this layer imports nothing of the stages above it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tuneloop.errors import ModelNotFoundError, TuneloopError
from tuneloop.models.catalog import BUILTIN, available_hint, unknown_model_error
from tuneloop.models.pull import pull as pull_builtin
from tuneloop.models.store import ModelStore


@dataclass
class ResolvedModel:
    ref: str  # what the user typed
    path: Path  # a local folder with config.json (or adapter_config.json for an adapter)
    kind: str  # "folder" | "store" | "hub" | "registry" | ...
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file() and not (self.path / "config.json").is_file()


Resolver = Callable[[str, bool], "ResolvedModel | None"]  # None: the reference is not its kind
RESOLVER_GROUP = "tuneloop.model_resolvers"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REGISTRY_LIKE = re.compile(r"^[\w.-]+(@[\w.-]+|/\d+)$")  # NAME@alias, NAME/VERSION (registry/refs.py)


@functools.cache
def plugin_resolvers() -> tuple[Resolver, ...]:
    """The resolvers other packages declare (the registry's), by entry-point name; tried before the
    built-in kinds, so `runs/3` is a registry version even when a folder `runs/3` exists."""
    found = []
    for ep in sorted(entry_points(group=RESOLVER_GROUP), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except (ImportError, AttributeError) as e:
            raise TuneloopError(
                f"model resolver plugin '{ep.name}' ({ep.value}) cannot be loaded: {e}",
                hint="reinstall tuneloop (`pip install -e .` in a checkout)",
            ) from None
    return tuple(found)


def resolve_model(ref: str, *, pull: bool = False) -> ResolvedModel:
    """Resolve `ref`; with `pull=True` a built-in model that is not yet in the store is pulled."""
    if not ref or not ref.strip():
        raise ModelNotFoundError("empty model reference", hint="give a folder, a store name or a hub id")
    plugins = plugin_resolvers()
    for resolver in [*plugins, _folder, _store, _builtin, _hub]:
        found = resolver(ref, pull)
        if found is not None:
            return found
    if not plugins and REGISTRY_LIKE.match(ref):
        # never "unknown model" for a registry reference that no registry was asked about
        raise ModelNotFoundError(
            f"'{ref}' looks like a registry reference, but no model resolver is installed "
            f"(entry point group {RESOLVER_GROUP})",
            hint="reinstall tuneloop (`pip install -e .` in a checkout); a stale src/tuneloop.egg-info "
            "on PYTHONPATH hides the installed one: delete it",
        )
    raise unknown_model_error(ref)


def _folder(ref: str, pull: bool) -> ResolvedModel | None:
    path = Path(ref).expanduser()
    looks_like_path = ref.startswith((".", "/", "~")) or (os.sep in ref and path.exists())
    if not path.exists():
        if looks_like_path and not HUB_ID.match(ref):
            raise ModelNotFoundError(f"model folder '{ref}' does not exist", hint="check the path")
        return None
    if not path.is_dir():
        raise ModelNotFoundError(
            f"'{ref}' is a file, not a model folder", hint="pass the folder that holds config.json"
        )
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise ModelNotFoundError(
            f"folder '{ref}' is not a Hugging Face model folder (no config.json or adapter_config.json)",
            hint="point at the folder written by save_pretrained",
        )
    return ResolvedModel(ref, path.resolve(), "folder", {"source": "folder", "path": str(path.resolve())})


def _store(ref: str, pull: bool) -> ResolvedModel | None:
    store = ModelStore()
    if "/" in ref or ref.startswith(".") or not store.has(ref):
        return None
    model = store.get(ref)
    return ResolvedModel(ref, model.path, "store", {"source": "store", **model.manifest.get("source", {})})


def _builtin(ref: str, pull: bool) -> ResolvedModel | None:
    if ref not in BUILTIN:
        return None
    if not pull:
        raise ModelNotFoundError(
            f"model '{ref}' is not pulled yet",
            hint=f"run `tuneloop models pull {ref}` (about 100 MB, no model hub needed)",
        )
    pull_builtin(ref)
    return _store(ref, False)


def _hub(ref: str, pull: bool) -> ResolvedModel | None:
    if not HUB_ID.match(ref) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return None
    try:
        from huggingface_hub import snapshot_download  # 0.6 s to import: only when a hub id is asked for

        folder = snapshot_download(
            ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        )
    except Exception as e:  # offline, gated, missing: the hub's own words go into our message
        raise ModelNotFoundError(
            f"'{ref}' could not be fetched from the Hugging Face Hub: {type(e).__name__}: {str(e)[:200]}",
            hint=available_hint(),
        ) from None
    return ResolvedModel(ref, Path(folder), "hub", {"source": "hub", "repo_id": ref})


def read_config(path: Path) -> dict[str, Any]:
    """The config.json of a model folder, as a dict."""
    return json.loads((Path(path) / "config.json").read_text())
