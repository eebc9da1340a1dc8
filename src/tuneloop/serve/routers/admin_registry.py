"""Admin routes for the model registry (the `admin` scope): what `tuneloop registry` shows and does.

GET  /admin/registry/models                         every model, latest version, aliases
GET  /admin/registry/models/{name}                  its versions (lineage, metrics, aliases) and alias history
GET  /admin/registry/models/{name}/versions/{v}     one version in full (`tuneloop registry show`)
POST /admin/registry/models/{name}/promote          {version, alias}
POST /admin/registry/models/{name}/rollback         {alias}

Moving an alias changes what users get, so promote and rollback take two calls: the first (without
confirmation) answers 409 with what would change and a `confirm_token` bound to exactly that move;
the second repeats the body with that token (or with `confirm: true`, for scripts). A token goes
stale when the alias moves in between. With `reload: true` the gateway re-resolves its model
references afterwards, so a served `NAME@alias` follows at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import ModelNotFoundError, TuneloopError
from tuneloop.registry import Registry, aliases, views
from tuneloop.registry.lineage import METRIC_PREFIX
from tuneloop.registry.refs import check_alias
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.errors import APIError, documented, error_body
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import integer
from tuneloop.serve.reload import reload_models

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

router = APIRouter(prefix="/admin/registry", tags=["admin"], route_class=AuthFirst)
# registry.refs' rules: a model name, and an alias (MLflow reserves `latest` and `v1`-style names:
# check_alias says so, with a hint; the pattern states it in the OpenAPI document)
NAME = Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALIAS_RULE = r"^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)(?![vV][0-9]+$)[A-Za-z_][A-Za-z0-9_-]*$"
ALIAS = Field(default="production", min_length=1, max_length=100, json_schema_extra={"pattern": ALIAS_RULE})
NOT_FOUND = documented(404, s404="No registered model (or version) of that name")
T = TypeVar("T")
MOVE = documented(
    404,
    409,
    s404=NOT_FOUND[404]["description"],
    s409="Confirmation required: the answer says what would change and the confirm_token to send",
)


def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except ModelNotFoundError as e:
        raise APIError(404, e.message, "model_not_found") from None
    except TuneloopError as e:
        status = 404 if "does not exist" in e.message or "no registered model" in e.message else 400
        raise APIError(status, e.message + (f" ({e.hint})" if e.hint else ""), "registry_error") from None


def _version_json(mv: ModelVersion) -> dict[str, Any]:
    tags = dict(mv.tags)
    return {
        "version": int(mv.version),
        "ref": f"{mv.name}/{mv.version}",
        "aliases": sorted(mv.aliases or []),
        "created": mv.creation_timestamp,
        "description": mv.description or "",
        "kind": tags.get("tuneloop.kind"),
        "lineage": {
            k.removeprefix("tuneloop."): v for k, v in sorted(tags.items()) if not k.startswith(METRIC_PREFIX)
        },
        "metrics": {
            k.removeprefix(METRIC_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(METRIC_PREFIX)
        },
    }


@router.get("/models")
def list_models(key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)) -> dict:
    return {"object": "list", "data": _call(views.list_models, gw.registry())}


@router.get("/models/{name}", responses=NOT_FOUND)
def show_model(
    name: str = NAME, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    reg = gw.registry()
    model = _call(reg.model, name)
    versions = _call(reg.versions, name)
    return {
        "name": name,
        "description": model.description or "",
        "aliases": {a: int(v) for a, v in sorted(dict(model.aliases or {}).items())},
        "versions": [_version_json(v) for v in reversed(versions)],  # newest first
        "history": _call(reg.history, name),
    }


@router.get("/models/{name}/versions/{version}", responses=NOT_FOUND)
def show_version(
    name: str = NAME,
    version: int = Path(ge=1, le=2**31),
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    return _call(views.describe, gw.registry(), f"{name}/{version}")


class AliasMove(BaseModel):
    model_config = ConfigDict(strict=True)

    alias: str = ALIAS
    confirm: bool = False
    confirm_token: str | None = Field(default=None, max_length=200)
    reload: bool = False  # re-resolve the gateway's model references after the move


class Promotion(AliasMove):
    version: integer(ge=1, le=2**31)


def _token(gw: Gateway, move: dict[str, Any]) -> str:
    message = json.dumps(move, sort_keys=True).encode()
    return hmac.new(gw.console_secret, message, hashlib.sha256).hexdigest()


def _preview(move: dict[str, Any], token: str, stale: bool) -> JSONResponse:
    """409: what would change, and the token that confirms exactly that."""
    before = move["from"] if move["from"] is not None else "nothing"
    message = (
        f"confirm: {move['action']} {move['name']}@{move['alias']} from version {before} to {move['to']}"
    )
    if stale:
        message += " (the alias moved since that token was issued)"
    body = error_body(409, message, "confirmation_required")
    return JSONResponse({**body, "confirm": {**move, "confirm_token": token}}, 409)


async def _move(
    gw: Gateway, body: AliasMove, plan: Callable[[], dict[str, Any]], apply: Callable[[], object]
) -> dict | JSONResponse:
    """plan() -> the move; unless the body confirms exactly it, a 409 preview; else apply() (and reload)."""
    move = await asyncio.to_thread(_call, plan)
    token = _token(gw, move)
    given = body.confirm_token
    if not (body.confirm or (given and hmac.compare_digest(given, token))):
        return _preview(move, token, stale=bool(given))
    await asyncio.to_thread(_call, apply)
    result: dict[str, Any] = {**move, "done": True}
    if body.reload:
        result["reloaded"] = await reload_models(gw)
    return result


def _current(reg: Registry, name: str, alias: str) -> int | None:
    found = dict(reg.model(name).aliases or {}).get(alias)
    return int(found) if found is not None else None


@router.post("/models/{name}/promote", response_model=None, responses=MOVE)
async def promote(
    body: Promotion,
    name: str = NAME,
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict | JSONResponse:
    reg = gw.registry()

    def plan() -> dict[str, Any]:
        check_alias(body.alias)
        reg.version(f"{name}/{body.version}")  # 404 for an unknown version, before any confirmation
        return {
            "action": "promote",
            "name": name,
            "alias": body.alias,
            "from": _current(reg, name, body.alias),
            "to": body.version,
        }

    return await _move(gw, body, plan, lambda: reg.promote(name, body.version, body.alias))


@router.post("/models/{name}/rollback", response_model=None, responses=MOVE)
async def rollback(
    body: AliasMove,
    name: str = NAME,
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict | JSONResponse:
    _call(check_alias, body.alias)
    reg = gw.registry()

    def plan() -> dict[str, Any]:
        current = _current(reg, name, body.alias)
        existing = {int(v.version) for v in reg.versions(name)}
        target = aliases.rollback_target(reg.history(name), body.alias, current, existing)
        return {"action": "rollback", "name": name, "alias": body.alias, "from": current, "to": target}

    return await _move(gw, body, plan, lambda: reg.rollback(name, body.alias))
