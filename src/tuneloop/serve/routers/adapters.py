"""Runtime LoRA adapters (the `admin` scope), vLLM's routes: `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter`.

A loaded adapter is a served name at once (chat, completions, `/v1/models` with its `parent`);
it is registered with its base engine's adapter cache (adapters.py), so more adapters than the
engine's `max_loras` may be loaded: they take turns in its slots. Unloading removes the served
name at once (new requests: 404); requests in flight finish first, then its slot is freed. Runtime
changes live in this process only: a restart serves what serve.yaml says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import TuneloopError
from tuneloop.models.resolve import ResolvedModel, resolve_model
from tuneloop.serve.adapters import check_adapter
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.backends import version_label
from tuneloop.serve.config import ModelConfig
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.limits import ConcurrencyGate
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.reload import retire_later
from tuneloop.serve.routing import Route
from tuneloop.serve.serving import Served

router = APIRouter(tags=["admin"], route_class=AuthFirst)
# a served name as a key stores it (comma-separated list), and as vLLM takes it
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,]+$")]
MAX_QUEUE = ModelConfig.model_fields["max_queue"].default


class LoadLoRA(BaseModel):
    """vLLM's body, plus `base_model`."""

    model_config = ConfigDict(strict=True)

    lora_name: ModelName = Field(description="the served name it gets (`model` in requests)")
    lora_path: str = Field(
        min_length=1, max_length=4096, description="a model reference: folder, NAME@alias, NAME/VERSION"
    )
    base_model: ModelName | None = Field(
        default=None, description="the served name whose engine gets it (default: the only local model)"
    )


class UnloadLoRA(BaseModel):
    model_config = ConfigDict(strict=True)

    lora_name: ModelName


@router.post(
    "/v1/load_lora_adapter",
    responses=documented(404, s404="base_model is not a served model, or no local model is served"),
)
async def load_lora_adapter(
    body: LoadLoRA, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    """Load a LoRA adapter on a served base model, without a restart (as vLLM's route)."""
    async with gw.reload_lock:  # one change of the served models at a time
        shared = _base(gw, body.base_model).shared
        adapter = await asyncio.to_thread(_checked_adapter, body.lora_path, shared)
        folder = adapter.path
        existing = gw.models.get(body.lora_name) or gw.routes.get(body.lora_name)
        if existing is not None:
            if _same(existing, shared, folder):  # loading the same again changes nothing
                return _card(gw, body.lora_name, existing.client, "already loaded")
            raise APIError(
                400,
                f"the name '{body.lora_name}' is already served; unload it first or pick another lora_name",
                "name_taken",
                "lora_name",
            )
        engine_name = shared.adapters.register(body.lora_name, folder)
        client = LocalClient(shared, engine_name, gw.config.limits.max_prompt_tokens)
        client.source, client.version = (shared.folder, folder), version_label(adapter)
        try:
            await shared.adapters.preload(client.lora)  # now if a slot is free or idle, else on first use
        except BaseException:
            await shared.adapters.unregister(client.lora)
            raise
        gate = ConcurrencyGate(client.max_num_seqs or 64, MAX_QUEUE, gw.config.limits.retry_after_s)
        gw.models = {**gw.models, body.lora_name: Served(body.lora_name, client, gate)}
    return _card(gw, body.lora_name, client, "added")


@router.post(
    "/v1/unload_lora_adapter",
    responses=documented(
        404,
        409,
        s404="No LoRA adapter of that name is served",
        s409="A route uses it, or it is the last served name of its base model",
    ),
)
async def unload_lora_adapter(
    body: UnloadLoRA, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    """Stop serving an adapter: new requests get 404 at once, requests in flight finish first."""
    name = body.lora_name
    async with gw.reload_lock:
        served = gw.models.get(name)
        if served is None:
            raise APIError(404, f"no LoRA adapter '{name}' is served", "model_not_found", "lora_name")
        client = served.client
        if not isinstance(client, LocalClient) or client.lora is None:
            raise APIError(
                400, f"'{name}' is a base model, not a LoRA adapter", "not_an_adapter", "lora_name"
            )
        using = [r.name for r in gw.routes.values() if name in (*(v for v, _ in r.variants), r.shadow)]
        if using:
            raise APIError(
                409, f"route '{using[0]}' sends requests to '{name}'; change the route first", "in_use"
            )
        others = [
            n
            for n, s in gw.models.items()
            if n != name and isinstance(s.client, LocalClient) and s.client.shared is client.shared
        ]
        if not others:
            raise APIError(
                409,
                f"'{name}' is the last model served by its engine (unloading it would leave the base "
                "unreachable); serve the base model too, as a `model:` entry without `lora:`",
                "last_model",
            )
        gw.models = {n: s for n, s in gw.models.items() if n != name}
        retire_later(gw, [client])  # its slot is freed when its requests in flight are done
    return {
        "id": name,
        "object": "model",
        "deleted": True,
        "message": f"Success: LoRA adapter '{name}' removed successfully.",
    }


def _base(gw: Gateway, name: str | None) -> LocalClient:
    """A client of the base model that gets the adapter: `name`'s engine, or the only local one."""
    if name is not None:
        served = gw.models.get(name)
        if served is None:
            raise APIError(404, f"base_model '{name}' is not a served model", "model_not_found", "base_model")
        if not isinstance(served.client, LocalClient) or served.client.shared.closed:
            raise APIError(
                400,
                f"base_model '{name}' is not a local model; adapters load into local engines",
                "invalid_value",
                "base_model",
            )
        return served.client
    engines: dict[int, LocalClient] = {}
    for s in gw.models.values():
        if isinstance(s.client, LocalClient) and not s.client.shared.closed:
            engines.setdefault(id(s.client.shared), s.client)
    if not engines:
        raise APIError(
            404, "no local model is served to load an adapter into", "model_not_found", "base_model"
        )
    if len(engines) > 1:
        names = sorted(gw.base_name(c.shared) for c in engines.values())
        raise APIError(
            400,
            f"several base models are served ({', '.join(names)}); give base_model",
            "invalid_value",
            "base_model",
        )
    return next(iter(engines.values()))


def _checked_adapter(ref: str, shared: SharedEngine) -> ResolvedModel:
    """The adapter, resolved and checked against the base (blocking: a registry lookup, file headers)."""
    try:
        adapter = resolve_model(ref)
        cache = shared.adapters
        check_adapter(adapter.path, ref, shared.folder, cache.slot_rank, cache.rank_setting)
    except TuneloopError as e:
        message = e.message if f"'{ref}'" in e.message else f"lora_path '{ref}': {e.message}"
        raise APIError(
            400, message + (f"; {e.hint}" if e.hint else ""), "invalid_adapter", "lora_path"
        ) from None
    return adapter


def _same(existing: Served | Route, shared: SharedEngine, folder: Path) -> bool:
    c = existing.client if isinstance(existing, Served) else None
    return (
        isinstance(c, LocalClient)
        and c.shared is shared
        and c.lora is not None
        and c.source == (shared.folder, folder)
    )


def _card(gw: Gateway, name: str, client: LocalClient, what: str) -> dict:
    cache = client.shared.adapters
    return {
        "id": name,
        "object": "model",
        "parent": gw.base_name(client.shared),
        "root": client.version,
        "resident": client.lora in cache.resident,
        "message": f"Success: LoRA adapter '{name}' {what} successfully."
        if what == "added"
        else f"LoRA adapter '{name}' is already loaded.",
    }
