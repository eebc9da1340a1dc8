"""One function turns any model reference into a local HF folder: `resolve_model(ref)`.

A reference is a local HF folder, a name in the model store, a built-in model name (pulled on
demand when asked), or a hub id when online. Later stages add their own kinds (the registry adds
`NAME@alias` and `NAME/VERSION`) with `register_resolver`, so every command that takes a model
accepts every kind of reference.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import ModelNotFoundError
from tuneloop.models.catalog import BUILTIN
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


Resolver = Callable[[str, bool], "ResolvedModel | None"]
_RESOLVERS: list[Resolver] = []
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def register_resolver(resolver: Resolver, *, first: bool = True) -> None:
    """Add a resolver; it returns None when the reference is not its kind."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.insert(0 if first else len(_RESOLVERS), resolver)


def resolve_model(ref: str, *, pull: bool = False) -> ResolvedModel:
    """Resolve `ref`; with `pull=True` a built-in model that is not yet in the store is pulled."""
    if not ref or not ref.strip():
        raise ModelNotFoundError("empty model reference", hint="give a folder, a store name or a hub id")
    for resolver in [*_RESOLVERS, _folder, _store, _builtin, _hub]:
        found = resolver(ref, pull)
        if found is not None:
            return found
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
    from tuneloop.models.pull import pull as do_pull

    do_pull(ref)
    return _store(ref, False)


def _hub(ref: str, pull: bool) -> ResolvedModel | None:
    if not HUB_ID.match(ref) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        )
    except Exception as e:  # offline, gated, missing: the hub's own words go into our message
        raise ModelNotFoundError(
            f"'{ref}' could not be fetched from the Hugging Face Hub: {type(e).__name__}: {str(e)[:200]}",
            hint=_available_hint(),
        ) from None
    return ResolvedModel(ref, Path(folder), "hub", {"source": "hub", "repo_id": ref})


def available_names() -> list[str]:
    return sorted(set(ModelStore().names()) | set(BUILTIN))


def _available_hint() -> str:
    names = available_names()
    return (
        f"available: {', '.join(names)}"
        if names
        else "no models yet: `tuneloop models pull smollm2-135m-instruct`"
    )


def unknown_model_error(ref: str, pullable_only: bool = False) -> ModelNotFoundError:
    choices = sorted(BUILTIN) if pullable_only else available_names()
    close = difflib.get_close_matches(ref, choices, n=1, cutoff=0.5)
    what = "built-in model" if pullable_only else "model"
    msg = f"unknown {what} '{ref}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    hint = f"available: {', '.join(choices)}" if choices else _available_hint()
    if not pullable_only:
        hint += "; a local folder or a hub id (when online) also works"
    return ModelNotFoundError(msg, hint=hint)


def read_config(path: Path) -> dict[str, Any]:
    """The config.json of a model folder, as a dict."""
    return json.loads((Path(path) / "config.json").read_text())


_REGISTRY_REF = re.compile(r"^[\w.-]+@[\w.-]+$|^[\w.-]+/\d+$")  # `org/name` hub ids have a non-digit name


def _registry(ref: str, pull: bool) -> ResolvedModel | None:
    """`NAME@alias` and `NAME/VERSION`; tuneloop.registry (and mlflow) is imported only for those."""
    if ref.startswith(".") or not _REGISTRY_REF.match(ref):
        return None
    from tuneloop.registry.resolver import resolve_reference

    return resolve_reference(ref, pull)


register_resolver(_registry)
