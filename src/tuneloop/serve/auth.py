"""Authentication as a FastAPI dependency: `Depends(require("inference"))` on a route.

A missing or unknown key is 401, a key without the scope or the model is 403, both in OpenAI's
error shape. The key itself never reaches logs: only its id does.

FastAPI reads and parses a route's JSON body before it runs any dependency, so a malformed body
would be a 400 even for a caller without a valid key or the scope. Routers that take bodies use
`route_class=AuthFirst`: the key and scope are checked before the body is read (a stranger learns
nothing about the body's rules), and the dependency then finds the key already checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from tuneloop.serve.errors import APIError
from tuneloop.serve.gateway import Gateway, gateway_of
from tuneloop.serve.keys import ApiKey

ANONYMOUS = ApiKey(id="anonymous", name="anonymous", scopes=["inference", "feedback", "admin"], models=["*"])


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def require(scope: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency that returns the caller's key, or raises 401/403 (counted by reason in the metrics)."""

    async def dependency(request: Request) -> ApiKey:
        checked = getattr(request.state, "key", None)  # by AuthFirst, before the body was read
        if checked is not None and scope in checked.scopes:
            return checked
        return await run_in_threadpool(_require, request, scope)  # a thread: the SQL lookup blocks

    dependency.scope = scope  # type: ignore[attr-defined]  # for AuthFirst
    return dependency


def _require(request: Request, scope: str) -> ApiKey:
    try:
        key = _authenticate(request)
        if scope not in key.scopes:
            raise APIError(403, f"this API key lacks the '{scope}' scope", "insufficient_scope")
    except APIError as e:
        gateway_of(request).metrics.rejected.labels(e.code or str(e.status), "").inc()  # model not known yet
        raise
    request.state.key = key
    return key


class AuthFirst(APIRoute):
    """A route that checks its `require(scope)` dependency before FastAPI reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        check = next((d.call for d in self.dependant.dependencies if hasattr(d.call, "scope")), None)
        if check is None:
            return handler

        async def authorized(request: Request) -> Response:
            await check(request)  # the dependency then finds the key checked: one lookup per request
            return await handler(request)

        return authorized


def required_scope(route: APIRoute) -> str | None:
    """The scope a route's `require` dependency asks for (None: open to everyone)."""
    return next((d.call.scope for d in route.dependant.dependencies if hasattr(d.call, "scope")), None)


def _authenticate(request: Request) -> ApiKey:
    gw = gateway_of(request)
    if not gw.config.auth.enabled:
        return ANONYMOUS
    token = _bearer(request)
    if token is None:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
    found = _verify(gw, token)
    if found is None:
        raise APIError(401, "invalid, revoked or expired API key", "invalid_api_key")
    return found


def _verify(gw: Gateway, token: str) -> ApiKey | None:
    # our keys start with tl-; a JWT is three dot-separated parts
    if gw.jwt is not None and not token.startswith("tl-") and token.count(".") == 2:
        return gw.jwt.verify(token)
    return gw.keys.verify(token)


def check_model(key: ApiKey, model: str) -> None:
    if not key.allows_model(model):
        raise APIError(403, f"this API key may not use model '{model}'", "model_not_allowed", "model")
