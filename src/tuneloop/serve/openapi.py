"""The OpenAPI document (/openapi.json), made to say what the server does.

FastAPI's generated document is adjusted where the server answers differently from FastAPI's
defaults (tests/serve/test_schemathesis.py holds the two together with every schemathesis check):

- a request that fails validation is a 400 in OpenAI's error shape (`serve.errors`), not a 422;
- a route behind a key lists 401 and 403 and the two ways to send the key (security schemes);
- a route that takes a body lists 413 (the size cap of `serve.middleware`);
- the server's own limits replace the protocol's static bounds: `n` at most `limits.max_n`,
  `max_tokens` and `max_completion_tokens` at most `limits.max_completion_tokens`;
- integer bounds are integers again: FastAPI's OpenAPI model stores them as floats, which turns a
  seed's 2**63 - 1 into 2**63 (a value the server refuses).

What only some routes answer (404, 409, 429, 503, 504, streams as `text/event-stream`) is declared
on those routes with `responses=` (`serve.errors.documented`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from tuneloop.serve.auth import required_scope
from tuneloop.serve.config import LimitsConfig
from tuneloop.serve.errors import DESCRIPTIONS, ErrorResponse
from tuneloop.serve.protocol import INT64_MAX, INT64_MIN, ChatCompletionChunk

SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`tuneloop keys create`) or, when auth.jwt is set, a JWT of the identity provider",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": "The same API key"},
}
_REF = "#/components/schemas/{model}"


def install_openapi(app: FastAPI, limits: LimitsConfig) -> None:
    """Replace `app.openapi` with one that adjusts FastAPI's document once, then serves it cached."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # FastAPI's, cached on the app: adjusted in place
            adjust(document, app, limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def adjust(document: dict[str, Any], app: FastAPI, limits: LimitsConfig) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorResponse, ChatCompletionChunk):  # referenced by errors and by stream events
        found = model.model_json_schema(ref_template=_REF, mode="serialization")
        schemas.update(found.pop("$defs", {}))
        schemas[model.__name__] = found
    scopes = {  # (path, method) -> the scope its key needs (included routers: their full paths)
        (route.path_format, method.lower()): required_scope(route.original_route)
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
        for method in route.methods or ()
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            _operation(operation, scopes.get((path, method)))
    if scopes and any(scopes.values()):
        components.setdefault("securitySchemes", {}).update(SCHEMES)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _limits(schemas, limits)
    _integer_bounds(document)


def _error(status: int) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }


def _operation(operation: dict[str, Any], scope: str | None) -> None:
    responses = operation.setdefault("responses", {})
    if responses.pop("422", None) is not None:
        responses.setdefault("400", _error(400))
    if "requestBody" in operation:
        responses.setdefault("413", _error(413))
    if scope is not None:
        responses.setdefault("401", _error(401))
        responses.setdefault("403", _error(403))
        operation["security"] = [{name: []} for name in SCHEMES]
        operation["description"] = (
            operation.get("description", "") + f"\n\nNeeds an API key with the `{scope}` scope."
        ).strip()
    operation["responses"] = dict(sorted(responses.items()))


def _limits(schemas: dict[str, Any], limits: LimitsConfig) -> None:
    caps = {
        "n": limits.max_n,
        "max_tokens": limits.max_completion_tokens,
        "max_completion_tokens": limits.max_completion_tokens,
    }
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        for field, cap in caps.items():
            if field in properties:
                _cap(properties[field], cap)


def _cap(prop: dict[str, Any], maximum: int) -> None:
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "integer":
            branch["maximum"] = min(branch.get("maximum", maximum), maximum)


# the int64 bounds (seeds, row ids) as FastAPI's float keeps them, and what they were
_INT64 = {("maximum", float(INT64_MAX)): INT64_MAX, ("minimum", float(INT64_MIN)): INT64_MIN}


def _integer_bounds(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _integer_bounds(item)
    if not isinstance(node, dict):
        return
    if node.get("type") == "integer":
        for key in ("minimum", "maximum"):
            value = node.get(key)
            if isinstance(value, float) and value.is_integer():
                node[key] = _INT64.get((key, value), int(value))
    for value in node.values():
        _integer_bounds(value)
