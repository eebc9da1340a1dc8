"""Authentication as a FastAPI dependency: `Depends(require("inference"))` on a route.

A missing or unknown key is 401, a key without the scope or the model is 403, both in OpenAI's
error shape. The key itself never reaches logs: only its id does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from tuneloop.serve.errors import APIError
from tuneloop.serve.keys import ApiKey

ANONYMOUS = ApiKey(id="anonymous", name="anonymous", scopes=["inference", "feedback", "admin"], models=["*"])


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def require(scope: str) -> Callable[[Request], ApiKey]:
    """A dependency that returns the caller's key, or raises 401/403 (counted by reason in the metrics)."""

    def dependency(request: Request) -> ApiKey:  # sync: FastAPI runs it in a thread (SQL lookup)
        try:
            key = _authenticate(request)
            if scope not in key.scopes:
                raise APIError(403, f"this API key lacks the '{scope}' scope", "insufficient_scope")
        except APIError as e:
            request.app.state.metrics.rejected.labels(
                e.code or str(e.status), ""
            ).inc()  # model not known yet
            raise
        request.state.key = key
        return key

    return dependency


def _authenticate(request: Request) -> ApiKey:
    state = request.app.state
    if not state.config.auth.enabled:
        return ANONYMOUS
    token = _bearer(request)
    if token is None:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
    found = _verify(state, token)
    if found is None:
        raise APIError(401, "invalid, revoked or expired API key", "invalid_api_key")
    return found


def _verify(state: Any, token: str) -> ApiKey | None:
    # our keys start with tl-; a JWT is three dot-separated parts
    if state.jwt is not None and not token.startswith("tl-") and token.count(".") == 2:
        return state.jwt.verify(token)
    return state.keys.verify(token)


def check_model(key: ApiKey, model: str) -> None:
    if not key.allows_model(model):
        raise APIError(403, f"this API key may not use model '{model}'", "model_not_allowed", "model")
