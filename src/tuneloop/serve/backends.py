"""Building the `EngineClient` of every served name from the config (in the app's lifespan).

Names that point at the same base model share one engine (and KV cache); a `lora` entry registers
its adapter with that engine's adapter cache (adapters.py: loaded into a slot on first use, evicted
when idle and others need the slot). Model references resolve through the registry, the store or a
folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.models.loading import pick_device
from tuneloop.models.resolve import ResolvedModel, resolve_model
from tuneloop.serve.adapters import check_adapter
from tuneloop.serve.client import EngineClient
from tuneloop.serve.config import ModelConfig, ServeConfig
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.memory import weights_outside_the_heap
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
        where = resolve_entry(m)
        folder, adapter_folder = where.folder, where.adapter
        if folder not in engines:
            settings = m.engine_kwargs()
            with weights_outside_the_heap():  # a reload's freed weights then go back to the OS (memory.py)
                engines[folder] = SharedEngine.load(
                    folder, process=engine_process(m.engine_process, settings.get("device")), **settings
                )
            cache = engines[folder].adapters
            cache.label, cache.owner = where.base_version, m.name  # m's engine: settings are its
        adapter = _register_adapter(engines[folder], m, adapter_folder) if adapter_folder else None
        client = LocalClient(engines[folder], adapter, config.limits.max_prompt_tokens, m.tool_parser)
        client.source, client.version = (folder, adapter_folder), where.version
        clients[m.name] = client
    return clients


def engine_process(asked: bool | None, device: object) -> bool:
    """Whether the engine steps in its own process: as asked, else on for CUDA (measured: at 128 streams
    on an H100 the gateway kept 0.80x of the engine's throughput against 0.65x in-process), off on the
    CPU (no gain measured there; BENCHMARKS.md)."""
    if asked is not None:
        return asked
    return pick_device(str(device or "auto")).startswith("cuda")


@dataclass(frozen=True)
class Resolution:
    """Where a local entry's references point now."""

    folder: Path  # the base model
    adapter: Path | None  # the LoRA adapter, if the entry has one
    version: str  # what answers, for headers and logs: "NAME/VERSION" (registry) or the folder's name
    base_version: str = ""  # the same of the base model

    @property
    def source(self) -> tuple[Path, Path | None]:
        return self.folder, self.adapter


def resolve_entry(m: ModelConfig) -> Resolution:
    """Resolve a local entry's `model` (and `lora`) now: a moved alias gives other folders."""
    base = resolve_model(m.model or "", pull=True)
    adapter = resolve_model(m.lora, pull=True) if m.lora else None
    if base.is_adapter:  # an alias may move between full and adapter versions: serve it on its base
        if adapter is not None:
            raise TuneloopError(
                f"'{m.model}' is a LoRA adapter", hint="serve it as `lora:` on its base `model:`"
            )
        adapter, base = base, resolve_model(_adapter_base(base.path), pull=True)
    shown = adapter or base
    return Resolution(base.path, adapter.path if adapter else None, version_label(shown), version_label(base))


def _adapter_base(folder: Path) -> str:
    return str(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")


def version_label(resolved: ResolvedModel) -> str:
    # a folder shows its name only: clients see this in a header, and server paths are not theirs
    return resolved.lineage.get("registry_version") or resolved.path.name


def _register_adapter(shared: SharedEngine, m: ModelConfig, folder: Path) -> str:
    """Check the entry's adapter against its base and register it; its engine name (fresh per
    registration, so a reloaded version never replaces one still serving)."""
    cache = shared.adapters
    try:
        check_adapter(folder, m.lora or m.model or "", shared.folder, cache.slot_rank, cache.rank_setting)
    except TuneloopError as e:
        raise TuneloopError(f"model '{m.name}': {e.message}", hint=e.hint) from None
    return cache.register(m.name, folder)
