"""Admin routes (the `admin` scope): API keys, live route weights, model reload.

The key and its scope are checked before a body is read (`AuthFirst`): a malformed body from a key
without the `admin` scope is a 403, not a 400.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.errors import TuneloopError
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.config import RouteConfig
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import MAX_EXPIRES_DAYS, MAX_QUOTA, SCOPES, ApiKey
from tuneloop.serve.protocol import integer
from tuneloop.serve.reload import reload_models
from tuneloop.serve.routing import Route

router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuthFirst)
MAX_WEIGHT = 1e6
# a served name as a key stores it: the list is kept comma-separated
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,]+$")]


@router.post("/reload")
async def reload(key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)) -> dict:
    """Re-resolve model references (a moved registry alias) and swap what changed, live."""
    return {"reloaded": await reload_models(gw)}


@router.get("/keys")
def list_keys(key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)) -> dict:
    return {"object": "list", "data": [asdict(k) for k in gw.keys.list()]}


class NewKey(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Literal[SCOPES]] | None = None  # type: ignore[valid-type]
    models: list[ModelName] | None = Field(default=None, description="served names it may use (default: all)")
    rpm: integer(ge=1, le=MAX_QUOTA) | None = None
    tpm: integer(ge=1, le=MAX_QUOTA) | None = None
    expires_days: float | None = Field(default=None, gt=0, le=MAX_EXPIRES_DAYS)


@router.post("/keys")
def create_key(
    body: NewKey, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    """Create a key; the secret is in this response only."""
    try:
        secret, record = gw.keys.create(
            body.name, body.scopes, body.models, body.rpm, body.tpm, body.expires_days
        )
    except TuneloopError as e:
        raise APIError(400, e.message, "invalid_value") from None
    return {"key": secret, **asdict(record)}


@router.delete("/keys/{key_id}", responses=documented(404, s404="No API key with that id"))
def revoke_key(
    key_id: str, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    try:
        return asdict(gw.keys.revoke(key_id))
    except TuneloopError as e:
        raise APIError(404, e.message, "key_not_found") from None


def _route_json(r: Route) -> dict:
    return {
        "name": r.name,
        "variants": [{"model": m, "weight": w} for m, w in r.variants],
        "shadow": r.shadow,
    }


@router.get("/routes")
def list_routes(key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)) -> dict:
    return {"object": "list", "data": [_route_json(r) for r in gw.routes.values()]}


class Variant(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)


# RouteConfig's rule, for the OpenAPI document: some variant weighs more than 0 (1 when not given)
SOME_WEIGHT = {
    "contains": {
        "anyOf": [{"not": {"required": ["weight"]}}, {"properties": {"weight": {"exclusiveMinimum": 0}}}]
    }
}


class RouteBody(BaseModel):
    model_config = ConfigDict(strict=True)

    variants: list[Variant] = Field(min_length=1, json_schema_extra=SOME_WEIGHT)
    shadow: str | None = Field(default=None, min_length=1)


@router.put(
    "/routes/{name}",
    responses=documented(
        404, 409, s404="A variant or the shadow is not a served model", s409="The name is a served model's"
    ),
)
def put_route(
    name: str, body: RouteBody, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    """Create or replace a route; the next request uses it, requests in flight finish where they are."""
    if name in gw.models:
        raise APIError(409, f"'{name}' is a served model, not a route", "name_taken", "name")
    try:
        config = RouteConfig.model_validate({**body.model_dump(), "name": name})
    except ValidationError as e:
        raise APIError(400, str(e.errors()[0]["msg"]), "invalid_value") from None
    unknown = [v.model for v in config.variants if v.model not in gw.models]
    if config.shadow and config.shadow not in gw.models:
        unknown.append(config.shadow)
    if unknown:
        raise APIError(404, f"'{unknown[0]}' is not a served model", "model_not_found", "variants")
    route = Route.from_config(config)
    gw.routes = {**gw.routes, name: route}  # replaced whole: readers never see half an update
    return _route_json(route)
