"""Adapters are stored as adapters, pinned to a base model the registry itself holds.

The stored adapter_config.json names its base as a registry reference (`BASE/VERSION`), so loading
the adapter anywhere (`tuneloop eval`, `serve`, PEFT through `resolve_model`) fetches that exact,
checksum-verified base, never a hub id or a local path that can vanish.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.errors import TuneloopError

CONFIG = "adapter_config.json"


def base_of(adapter: Path) -> str:
    """The base model reference an adapter folder names."""
    try:
        ref = json.loads((adapter / CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise TuneloopError(
            f"{adapter / CONFIG} cannot be read: {e}", hint="is it a PEFT adapter folder?"
        ) from None
    if not ref:
        raise TuneloopError(
            f"{adapter / CONFIG}: field 'base_model_name_or_path' is empty",
            hint="an adapter must say which base model it was trained on",
        )
    return str(ref)


def pin_adapter(adapter: Path, base_ref: str) -> str:
    """Rewrite the stored adapter_config.json to load its base from the registry; returns `base_ref`."""
    path = adapter / CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_ref
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return base_ref
