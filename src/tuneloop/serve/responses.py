"""Turning a `Generation` into an HTTP response: one JSON body, or server-sent events.

Admission happens before the response starts, so overload is a clean 429 even for streams; the
slot is released and the log line written when the body (or the stream) ends, however it ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

from fastapi.responses import JSONResponse, StreamingResponse

from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.errors import APIError, error_body
from tuneloop.serve.serving import Generation


@dataclass
class ChoiceResult:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    echo_text: str | None = None
    echo_logprobs: list[TokenLogprob] | None = None


class Event(NamedTuple):
    """One SSE event already encoded as JSON (the per-token fast path), and the text it carries."""

    data: str
    index: int = 0
    text: str = ""


def _encode(chunk: dict | Event, texts: dict[int, list[str]]) -> str:
    """The `data:` line of a chunk; the text of each choice is collected for the request log."""
    if isinstance(chunk, Event):
        texts.setdefault(chunk.index, []).append(chunk.text)
        return f"data: {chunk.data}\n\n"
    for c in chunk.get("choices", []):
        piece = c.get("text") or (c.get("delta") or {}).get("content") or ""
        texts.setdefault(c["index"], []).append(piece)
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


async def collect(gen: Generation) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in gen.choices]
    async for index, delta in gen.stream():
        r = results[index]
        r.text += delta.text
        r.logprobs.extend(delta.logprobs)
        r.finish_reason = delta.finish_reason or r.finish_reason
        if delta.echo_text is not None:
            r.echo_text, r.echo_logprobs = delta.echo_text, delta.echo_logprobs
    return results


async def _admit(gen: Generation) -> None:
    try:
        await gen.admit()
    except APIError as e:  # refused (quota, overload): counted and logged like any other answer
        gen.request.app.state.metrics.rejected.labels(e.code or str(e.status), gen.served.name).inc()
        await gen.finish(e.status, error=e.message)
        raise


async def json_response(
    gen: Generation, build: Callable[[list[ChoiceResult]], dict], timeout_s: float
) -> JSONResponse:
    await _admit(gen)
    try:
        results = await asyncio.wait_for(collect(gen), timeout_s)
        body = build(results)
    except TimeoutError:
        await gen.finish(504, error="timeout")
        raise APIError(504, f"the request took longer than {timeout_s:g}s", "timeout") from None
    except APIError as e:
        await gen.finish(e.status, error=e.message)
        raise
    except Exception as e:
        await gen.finish(500, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        await gen.release()
    await gen.finish(200, body)
    return JSONResponse(body, headers=_headers(gen))


async def sse_response(
    gen: Generation, chunks: Callable[[Generation], AsyncIterator[dict | Event]], timeout_s: float
) -> StreamingResponse:
    await _admit(gen)
    source = aiter(chunks(gen))
    try:  # the first chunk before any byte is sent: a bad request is still a proper 4xx
        first = await _next_before(source, gen.start + timeout_s)
    except BaseException as e:
        await gen.release()
        status = e.status if isinstance(e, APIError) else 500
        await gen.finish(status, error=getattr(e, "message", None) or f"{type(e).__name__}: {e}")
        raise

    async def events() -> AsyncIterator[str]:
        status, error, texts = 200, None, {}
        try:
            chunk = first
            while chunk is not None:
                yield _encode(chunk, texts)
                chunk = await _next_before(source, gen.start + timeout_s)
            yield "data: [DONE]\n\n"
        except APIError as e:  # headers are sent already: the error goes into the stream
            status, error = e.status, e.message
            yield f"data: {json.dumps(error_body(e.status, e.message, e.code))}\n\n"
        except asyncio.CancelledError:  # the client went away; closing the streams aborts the engine requests
            status, error = 499, "client disconnected"
            raise
        except Exception as e:
            status, error = 500, f"{type(e).__name__}: {e}"
            yield f"data: {json.dumps(error_body(500, 'internal server error'))}\n\n"
        finally:
            await source.aclose()
            await gen.release()
            logged = [{"index": i, "text": "".join(t)} for i, t in sorted(texts.items())]
            await gen.finish(status, {"choices": logged}, error)

    return StreamingResponse(events(), media_type="text/event-stream", headers=_headers(gen))


async def _next_before(source: AsyncIterator[dict | Event], deadline: float) -> dict | Event | None:
    """The next chunk, or a 504 once the request has used up its time (a stream is timed as a whole).

    `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for wraps every chunk in a new Task."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            return await anext(source, None)
    except TimeoutError:
        raise APIError(504, "the request took longer than its time limit", "timeout") from None


def _headers(gen: Generation) -> dict[str, str]:
    headers = {"X-Tuneloop-Variant": gen.served.variant, "X-Tuneloop-Model": gen.served.name}
    if gen.served.version is not None:
        headers["X-Tuneloop-Model-Version"] = quote(gen.served.version, safe="/@:._-")
    return headers
