"""The model registry: versions, aliases, lineage and rollback on MLflow's Model Registry.

    from tuneloop.registry import Registry
    reg = Registry()                                   # SQLite in TUNELOOP_HOME, or any tracking URI
    v = reg.register_run("runs/acme", "acme")          # a version with lineage tags and checksums
    reg.promote("acme", v.version, "production")
    reg.get("acme@production").path                    # verified local folder
    reg.rollback("acme")                               # production back to the version before

An adapter version's folder holds only the adapter; its base is the registry version named by the tag
`tuneloop.base` (and by adapter_config.json): `reg.get(info.tags["tuneloop.base"]).path`.
References `NAME@alias` and `NAME/VERSION` resolve through `tuneloop.models.resolve.resolve_model`.
"""

from __future__ import annotations

from tuneloop.registry.core import ModelVersionInfo, Registry

__all__ = ["ModelVersionInfo", "Registry"]
