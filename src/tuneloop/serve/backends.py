"""Building the `EngineClient` of every served name from the config (in the app's lifespan).

Names that point at the same base model share one engine (and KV cache); a `lora` entry loads its
adapter into that engine. Model references resolve through the registry, the store or a folder.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.serve.client import EngineClient
from tuneloop.serve.config import ModelConfig, ServeConfig
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.upstream import UpstreamClient


def build_clients(
    config: ServeConfig, only: set[str] | None = None, engines: dict[Path, SharedEngine] | None = None
) -> dict[str, EngineClient]:
    """Blocking (loads weights): call it in a thread. `only` limits it to some names (reload);
    `engines` are already loaded ones to share (an adapter change reuses its base)."""
    engines = dict(engines or {})
    clients: dict[str, EngineClient] = {}
    for m in config.models:
        if only is not None and m.name not in only:
            continue
        if m.upstream is not None:
            clients[m.name] = UpstreamClient(
                m.upstream, m.upstream_model or m.name, m.upstream_api_key, config.limits.request_timeout_s
            )
            continue
        folder, adapter_folder = resolved_paths(m) or (Path(), None)
        if folder not in engines:
            engines[folder] = SharedEngine.load(
                folder, kv_cache_gib=m.kv_cache_gib, max_model_len=m.max_model_len, device=m.device
            )
        adapter = _load_adapter(engines[folder], m.name, adapter_folder) if adapter_folder else None
        client = LocalClient(engines[folder], adapter, config.limits.max_prompt_tokens)
        client.source = (folder, adapter_folder)
        clients[m.name] = client
    return clients


def resolved_paths(m: ModelConfig) -> tuple[Path, Path | None] | None:
    """(base folder, adapter folder) a local entry resolves to now; None for an upstream."""
    if m.model is None:
        return None
    adapter = _adapter_folder(m.lora) if m.lora else None
    return _folder(m.model), adapter


def _adapter_folder(ref: str) -> Path:
    from tuneloop.models.resolve import resolve_model

    return resolve_model(ref, pull=True).path


def _folder(ref: str) -> Path:
    from tuneloop.models.resolve import resolve_model

    resolved = resolve_model(ref, pull=True)
    if resolved.is_adapter:
        raise TuneloopError(f"'{ref}' is a LoRA adapter", hint="serve it as `lora:` on its base `model:`")
    return resolved.path


def _load_adapter(shared: SharedEngine, served_name: str, folder: Path) -> str:
    # a fresh adapter name per load, so a reloaded version never replaces one still serving
    loaded = shared.engine.engine.lora
    taken = set(loaded.adapters) if loaded else set()
    name, n = served_name, 0
    while name in taken:
        n += 1
        name = f"{served_name}#{n}"
    shared.engine.engine.load_lora(name, folder)
    return name
