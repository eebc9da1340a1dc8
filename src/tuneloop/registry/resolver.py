"""`resolve_model("NAME@alias")` / `("NAME/VERSION")`: a verified local copy of a registry version."""

from __future__ import annotations

from tuneloop.models.resolve import ResolvedModel


def resolve_reference(ref: str, pull: bool = False) -> ResolvedModel:
    """Any registry reference as a local folder; its tags become the lineage (no "reference" key:
    the training recipe puts the typed reference there)."""
    from tuneloop.registry import Registry

    registry = Registry()
    info = registry.get(ref)
    lineage = {
        **info.tags,
        "source": "registry",
        "registry_version": info.ref,
        "registry_uri": registry.tracking_uri,
    }
    return ResolvedModel(ref, info.path, "registry", lineage)
