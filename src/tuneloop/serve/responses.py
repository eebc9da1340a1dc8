"""HTTP mechanics of the generation routes: a whole answer collected, or chunks sent as server-sent events.

The routes own what they answer: each builds its full response from the collected choices and
yields its own stream chunks; these helpers only collect, encode, time and watch the connection.

A client that leaves stops its engine requests within a step, streaming or not: until the first
byte is sent (the whole of a JSON answer, the first chunk of a stream) the ASGI receive channel is
watched for `http.disconnect`; after that Starlette's StreamingResponse watches it and cancels the
stream. Either way the engine streams are closed, which aborts their requests before the next step,
and the request is logged as 499 with the tokens generated until then.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar
from urllib.parse import quote

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from tuneloop.models.tool_calls import ToolCallDelta, assemble
from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.errors import CLIENT_CLOSED, APIError, ClientGone, error_body
from tuneloop.serve.serving import Generation


@dataclass
class ChoiceResult:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    echo_text: str | None = None
    echo_logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)  # the pieces, in order


T = TypeVar("T")


class Event(NamedTuple):
    """One SSE event already encoded as JSON (the per-token fast path), and the text it carries."""

    data: str
    index: int = 0
    text: str = ""


def _encode(chunk: dict | Event, texts: dict[int, list[str]], calls: dict[int, list[ToolCallDelta]]) -> str:
    """The `data:` line of a chunk; the text and tool-call pieces of each choice are collected for the
    request log."""
    if isinstance(chunk, Event):
        texts.setdefault(chunk.index, []).append(chunk.text)
        return f"data: {chunk.data}\n\n"
    for c in chunk.get("choices", []):
        delta = c.get("delta") or {}
        piece = c.get("text") or delta.get("content") or ""
        texts.setdefault(c["index"], []).append(piece)
        for t in delta.get("tool_calls") or []:
            fn = t.get("function") or {}
            calls.setdefault(c["index"], []).append(
                ToolCallDelta(t["index"], t.get("id"), fn.get("name"), fn.get("arguments") or "")
            )
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _logged(texts: dict[int, list[str]], calls: dict[int, list[ToolCallDelta]]) -> list[dict]:
    """The choices of a stream for the request log: text, and tool calls assembled."""
    out = []
    for i in sorted(set(texts) | set(calls)):
        choice: dict = {"index": i, "text": "".join(texts.get(i, []))}
        if i in calls:
            choice["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in assemble(calls[i])
            ]
        out.append(choice)
    return out


async def collect(gen: Generation) -> list[ChoiceResult]:
    """Every choice's text, inside `gen.admitted()`; unless the client leaves first (ClientGone, with
    what had been generated) or the request's time runs out (TimeoutError)."""
    results = [ChoiceResult() for _ in gen.choices]
    try:
        await _unless_gone(gen.request, _collect(gen, results), gen.timeout_s)
    except ClientGone as e:  # the engine requests were aborted: log what was generated until then
        e.response = {"choices": [{"index": i, "text": r.text} for i, r in enumerate(results)]}
        raise
    return results


async def _collect(gen: Generation, results: list[ChoiceResult]) -> None:
    async for index, delta in gen.stream():
        r = results[index]
        r.text += delta.text
        r.logprobs.extend(delta.logprobs)
        r.tool_calls.extend(delta.tool_calls)
        r.finish_reason = delta.finish_reason or r.finish_reason
        if delta.echo_text is not None:
            r.echo_text, r.echo_logprobs = delta.echo_text, delta.echo_logprobs


async def event_stream(gen: Generation, chunks: AsyncGenerator[dict | Event, None]) -> StreamingResponse:
    """A route's chunks as server-sent events. Admission and the first chunk come before any byte is
    sent, so a refusal (429) or a bad request (a prompt too long) keeps its status."""
    events = _events(gen, chunks)
    await anext(events)  # admitted, and the first chunk is there (or the error is raised here)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers(gen))


async def _events(gen: Generation, chunks: AsyncGenerator[dict | Event, None]) -> AsyncGenerator[str, None]:
    deadline = gen.start + gen.timeout_s
    async with gen.admitted():
        try:  # the first chunk before any byte is sent: a bad request is still a proper 4xx
            chunk = await _unless_gone(gen.request, _next_before(chunks, deadline))
        except BaseException:  # left before its first token (e.g. queued in the engine), or failed
            await chunks.aclose()  # aborts the engine requests
            raise
        # 499 unless it ends below: the client went away, and Starlette cancelled the stream (or it is
        # closed, unfinished, while a chunk was being sent); closing the chunks aborts the engine requests
        status, error, texts, calls = CLIENT_CLOSED, "client disconnected", {}, {}
        try:
            yield ""  # to `event_stream`, which starts the response (nothing is sent for it)
            while chunk is not None:
                yield _encode(chunk, texts, calls)
                chunk = await _next_before(chunks, deadline)
            status, error = 200, None
            yield "data: [DONE]\n\n"
        except APIError as e:  # headers are sent already: the error goes into the stream
            status, error = e.status, e.message
            yield f"data: {json.dumps(error_body(e.status, e.message, e.code))}\n\n"
        except Exception as e:
            status, error = 500, f"{type(e).__name__}: {e}"
            yield f"data: {json.dumps(error_body(500, 'internal server error'))}\n\n"
        finally:
            # shielded: after a disconnect Starlette's cancel scope would cancel every await here again,
            # and the log line and the token count must not be lost
            with anyio.CancelScope(shield=True):
                await chunks.aclose()
                await gen.finish(status, {"choices": _logged(texts, calls)}, error)


async def _unless_gone(request: Request, work: Awaitable[T], timeout_s: float | None = None) -> T:
    """`work`'s result, unless the client leaves first (ClientGone) or `timeout_s` passes (TimeoutError).

    Once the body is read, the ASGI receive channel has nothing left to say but `http.disconnect`,
    so waiting on it costs nothing and sees a disconnect at once (no polling). `work` is cancelled
    and awaited before this returns: its engine streams are closed (their requests aborted) by then.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait((task, gone), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task in done:
        return task.result()
    if gone in done:
        gone.exception()  # (a receive channel that failed counts as a client gone: nobody to answer)
        raise ClientGone
    raise TimeoutError


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # (more body: never after FastAPI read it; a pipelined request waits in the server)


async def _next_before(source: AsyncIterator[dict | Event], deadline: float) -> dict | Event | None:
    """The next chunk, or a 504 once the request has used up its time (a stream is timed as a whole).

    `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for wraps every chunk in a new Task."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            return await anext(source, None)
    except TimeoutError:
        raise APIError(504, "the request took longer than its time limit", "timeout") from None


def headers(gen: Generation) -> dict[str, str]:
    """What answered: the served name, its variant and (when known) its version."""
    headers = {"X-Tuneloop-Variant": gen.served.variant, "X-Tuneloop-Model": gen.served.name}
    if gen.served.version is not None:
        headers["X-Tuneloop-Model-Version"] = quote(gen.served.version, safe="/@:._-")
    return headers
