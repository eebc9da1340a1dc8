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


def build_clients(config: ServeConfig) -> dict[str, EngineClient]:
    """Blocking (loads weights): call it in a thread."""
    engines: dict[Path, SharedEngine] = {}
    clients: dict[str, EngineClient] = {}
    for m in config.models:
        if m.upstream is not None:
            clients[m.name] = UpstreamClient(
                m.upstream, m.upstream_model or m.name, m.upstream_api_key, config.limits.request_timeout_s
            )
            continue
        folder = _folder(m.model or "")
        if folder not in engines:
            engines[folder] = SharedEngine.load(
                folder, kv_cache_gib=m.kv_cache_gib, max_model_len=m.max_model_len, device=m.device
            )
        adapter = _load_adapter(engines[folder], m) if m.lora else None
        clients[m.name] = LocalClient(engines[folder], adapter, config.limits.max_prompt_tokens)
    return clients


def _folder(ref: str) -> Path:
    from tuneloop.models.resolve import resolve_model

    resolved = resolve_model(ref, pull=True)
    if resolved.is_adapter:
        raise TuneloopError(f"'{ref}' is a LoRA adapter", hint="serve it as `lora:` on its base `model:`")
    return resolved.path


def _load_adapter(shared: SharedEngine, m: ModelConfig) -> str:
    from tuneloop.models.resolve import resolve_model

    resolved = resolve_model(m.lora or "", pull=True)
    shared.engine.engine.load_lora(m.name, resolved.path)
    return m.name
