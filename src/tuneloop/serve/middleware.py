"""ASGI middleware (pure ASGI: no per-request task or body buffering): request ids, body size cap.

`X-Request-Id` from the client is kept (when sane) and echoed; otherwise one is made. Bodies over
the limit are refused (413): by their Content-Length before any byte is read, or, for a chunked
upload, as soon as the bytes read pass the limit.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.serve.errors import error_body

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # latency and TTFT count from here: the time in auth, body parsing and the route is the gateway's too
        state["received"] = time.monotonic()
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await _refuse(send, request_id, self.max_body_bytes)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # chunked upload: read it up to the limit first (bounded), then replay it to the app
            body = await _read_limited(receive, self.max_body_bytes)
            if body is None:
                return await _refuse(send, request_id, self.max_body_bytes)
            receive = _replay(body, receive)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _read_limited(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the server's own channel: it says `http.disconnect` when the
    client leaves (responses.py watches for that to abort the request), not at once."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, request_id: str, limit: int) -> None:
    body = json.dumps(error_body(413, f"the request body exceeds {limit} bytes", "body_too_large")).encode()
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
