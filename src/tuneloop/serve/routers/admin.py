"""Admin routes (the `admin` scope): API keys, live route weights, model reload."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, ValidationError

from tuneloop.errors import TuneloopError
from tuneloop.serve.auth import require
from tuneloop.serve.config import RouteConfig, VariantConfig
from tuneloop.serve.errors import APIError
from tuneloop.serve.keys import MAX_EXPIRES_DAYS, MAX_QUOTA, ApiKey
from tuneloop.serve.reload import reload_models
from tuneloop.serve.routing import Route

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload")
async def reload(request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    """Re-resolve model references (a moved registry alias) and swap what changed, live."""
    return {"reloaded": await reload_models(request.app.state)}


@router.get("/keys")
def list_keys(request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    return {"object": "list", "data": [asdict(k) for k in request.app.state.keys.list()]}


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] | None = None
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1, le=MAX_QUOTA)
    tpm: int | None = Field(default=None, ge=1, le=MAX_QUOTA)
    expires_days: float | None = Field(default=None, gt=0, le=MAX_EXPIRES_DAYS)


@router.post("/keys")
def create_key(body: NewKey, request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    """Create a key; the secret is in this response only."""
    try:
        secret, record = request.app.state.keys.create(
            body.name, body.scopes, body.models, body.rpm, body.tpm, body.expires_days
        )
    except TuneloopError as e:
        raise APIError(400, e.message, "invalid_value") from None
    return {"key": secret, **asdict(record)}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    try:
        return asdict(request.app.state.keys.revoke(key_id))
    except TuneloopError as e:
        raise APIError(404, e.message, "key_not_found") from None


def _route_json(r: Route) -> dict:
    return {
        "name": r.name,
        "variants": [{"model": m, "weight": w} for m, w in r.variants],
        "shadow": r.shadow,
    }


@router.get("/routes")
def list_routes(request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    return {"object": "list", "data": [_route_json(r) for r in request.app.state.routes.values()]}


class RouteBody(BaseModel):
    variants: list[VariantConfig] = Field(min_length=1)
    shadow: str | None = None


@router.put("/routes/{name}")
def put_route(name: str, body: RouteBody, request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    """Create or replace a route; the next request uses it, requests in flight finish where they are."""
    state = request.app.state
    if name in state.models:
        raise APIError(400, f"'{name}' is a served model, not a route", "invalid_value", "name")
    try:
        config = RouteConfig.model_validate({**body.model_dump(), "name": name})
    except ValidationError as e:
        raise APIError(400, str(e.errors()[0]["msg"]), "invalid_value") from None
    unknown = [v.model for v in config.variants if v.model not in state.models]
    if config.shadow and config.shadow not in state.models:
        unknown.append(config.shadow)
    if unknown:
        raise APIError(400, f"'{unknown[0]}' is not a served model", "invalid_value", "variants")
    route = Route.from_config(config)
    state.routes = {**state.routes, name: route}  # replaced whole: readers never see half an update
    return _route_json(route)
