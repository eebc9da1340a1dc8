"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}.

Routes raise `APIError`; the handlers here turn it, FastAPI's validation errors and any bug into
that shape, so clients (the `openai` package included) see the status and message they expect.
A request that fails validation is a 400 (as OpenAI and vLLM answer), never FastAPI's 422; the
message and `param` name the field the way OpenAI does (`messages[0].content`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

log = logging.getLogger("tuneloop.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}
DESCRIPTIONS = {
    400: "Invalid request: a field of the wrong type or out of range (named in `param`), or a request "
    "the served model cannot take (e.g. context_length_exceeded)",
    401: "Missing, invalid, revoked or expired API key",
    403: "The API key lacks the scope or may not use the model",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The request body is larger than limits.max_body_bytes",
    429: "Over the key's quota or the model's queue; retry after the Retry-After header's seconds",
    503: "Not available now (the rate-limit store is down, or the model was reloaded); retry",
    504: "The request took longer than limits.request_timeout_s",
}
# labels pydantic puts in an error's location for the branch of a union (`str`, `list[int]`,
# `constrained-int`, `literal['up','down']`): not part of the field's name
_BRANCH = re.compile(r"^(str|int|float|bool|none|[a-z]+-[a-z-]+(\[.*\])?|[a-z]+\[.*\])$")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.code, e.param), e.status, headers=e.headers)


def documented(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error schema (`descriptions`: "s404"="...")."""
    return {
        s: {"model": ErrorResponse, "description": descriptions.get(f"s{s}", DESCRIPTIONS.get(s, "Error"))}
        for s in statuses
    }


def field_path(loc: tuple[int | str, ...]) -> str:
    """`("body", "messages", 0, "content", "str")` -> `messages[0].content`."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (i == 0 and part in ("body", "query", "path", "header")) or _BRANCH.match(part):
            continue
        else:
            out += f".{part}" if out else part
    return out


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(message, param) for pydantic's errors: the first field's, where it failed deepest (the form of
    a union that got furthest); several forms that failed equally deep are all said."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON: {detail}".rstrip(": "), None
    top = field_path(first["loc"][:2])
    same = [e for e in errors if field_path(e["loc"][:2]) == top]
    deepest = max(len(field_path(e["loc"])) for e in same)
    chosen = [e for e in same if len(field_path(e["loc"])) == deepest]
    where = field_path(chosen[0]["loc"])
    said = list(dict.fromkeys(str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in chosen))
    message = "; or ".join(said[:3])
    if not where:
        return f"request body: {message}", None
    return f"{where}: {message}", where


CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never seen by the client


class ClientGone(Exception):
    """The client closed the connection before the answer was ready; `response` is what it had been
    given (logged with the 499)."""

    def __init__(self, response: dict[str, Any] | None = None):
        super().__init__("client disconnected")
        self.response = response if response is not None else {"choices": []}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it

    @app.exception_handler(APIError)
    async def _api(request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return JSONResponse(error_body(400, message, "invalid_value", param), 400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(e.status_code, str(e.detail)), e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error"), 500)
