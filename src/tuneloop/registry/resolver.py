"""`resolve_model("NAME@alias")` / `("NAME/VERSION")`: a verified local copy of a registry version."""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import ModelNotFoundError
from tuneloop.models.resolve import ResolvedModel


def resolve_reference(ref: str, pull: bool = False) -> ResolvedModel:
    """Any registry reference as a local folder; its tags become the lineage (no "reference" key:
    the training recipe puts the typed reference there)."""
    from tuneloop.registry import Registry

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
