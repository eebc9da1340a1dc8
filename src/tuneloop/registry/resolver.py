"""`resolve_model("NAME@alias")` / `("NAME/VERSION")`: a verified local copy of a registry version.

`tuneloop.models` finds `resolve_reference` through the entry point `tuneloop.model_resolvers`
(pyproject.toml), so the models layer never imports the registry. MLflow is imported only when a
registry reference is resolved (`Registry()` opens the MLflow client).
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import ModelNotFoundError
from tuneloop.models.resolve import ResolvedModel
from tuneloop.registry.core import Registry
from tuneloop.registry.refs import is_registry_ref


def resolve_reference(ref: str, pull: bool = False) -> ResolvedModel | None:
    """A registry reference as a local folder, None for any other kind of reference. The version's
    tags become the lineage (no "reference" key: the training recipe puts the typed reference there)."""
    if not is_registry_ref(ref):
        return None
    registry = Registry()
    try:
        info = registry.get(ref)
    except ModelNotFoundError as e:
        if Path(ref).is_dir():  # `runs/3` may have meant a folder: registry references win, say how to ask
            raise ModelNotFoundError(
                e.message, hint=f"for the local folder write ./{ref}; {e.hint}"
            ) from None
        raise
    lineage = {
        **info.tags,
        "source": "registry",
        "registry_version": info.ref,
        "registry_uri": registry.tracking_uri,
    }
    return ResolvedModel(ref, info.path, "registry", lineage)
