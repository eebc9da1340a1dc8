"""Live model changes: re-resolve every model reference and swap what changed, without a restart.

Moving a registry alias (`support-bot@production`) changes what its reference resolves to; a reload
loads the new version next to the old one, warms it up, and swaps the served name over in one
assignment. Requests in flight finish on the old version, which is closed once drained; rolling
back is moving the alias back and reloading again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.serve.backends import build_clients, resolve_entry
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.serving import Served

if TYPE_CHECKING:
    from tuneloop.serve.gateway import Gateway  # which runs `watch`: a type-only import

log = logging.getLogger("tuneloop.serve")
DRAIN_TIMEOUT_S = 600.0


async def reload_models(gw: Gateway) -> list[str]:
    """Swap every local model whose reference now resolves elsewhere; return the names swapped."""
    async with gw.reload_lock:  # one reload at a time
        changed = await asyncio.to_thread(_changed, gw)
        if not changed:
            return []
        reusable = _engines_by_folder(gw)
        fresh = await asyncio.to_thread(build_clients, gw.config, set(changed), reusable)
        await asyncio.gather(*(c.start() for c in fresh.values()))
        old = {name: gw.models[name] for name in fresh}
        gw.models = {**gw.models, **{n: Served(n, c, old[n].gate) for n, c in fresh.items()}}
        retire_later(gw, [s.client for s in old.values()])
        log.info("reloaded %s", ", ".join(fresh))
        return sorted(fresh)


def retire_later(gw: Gateway, clients: list[LocalClient]) -> None:
    """Retire clients no longer served (replaced by a reload, or an unloaded adapter) once drained."""
    task = asyncio.create_task(_retire(clients, gw))
    gw.background.add(task)
    task.add_done_callback(gw.background.discard)


def _changed(gw: Gateway) -> list[str]:
    names = []
    for m in gw.config.models:
        if m.name not in gw.models:  # an adapter unloaded through the admin API stays unloaded
            continue
        client = gw.models[m.name].client
        if isinstance(client, LocalClient) and resolve_entry(m).source != client.source:
            names.append(m.name)
    return names


def _engines_by_folder(gw: Gateway) -> dict[Path, SharedEngine]:
    return {
        s.client.shared.folder: s.client.shared
        for s in gw.models.values()
        if isinstance(s.client, LocalClient)
    }


async def _retire(clients: list[LocalClient], gw: Gateway) -> None:
    """Close replaced clients once their requests are done (and no served name still uses the engine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT_S
    while any(c.active for c in clients) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    in_use = {id(s.client.shared) for s in gw.models.values() if isinstance(s.client, LocalClient)}
    for c in clients:
        if id(c.shared) not in in_use:
            await c.close()
        elif c.lora is not None:  # its slot is freed once its last request ends
            await c.shared.adapters.unregister(c.lora)


async def watch(gw: Gateway, interval_s: float) -> None:
    """Reload every `interval_s` seconds until cancelled; a failed reload keeps the models as they are."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reload_models(gw)
        except Exception:  # e.g. the registry is unreachable for a moment: try again next time
            log.warning("model reload failed; still serving the loaded versions", exc_info=True)
