"""One generation call, shared by the chat and completion routes: admission, fan-out, accounting.

Admission is the key's quota and the model's bounded gate (429 beyond them), held as a context
(`async with generation.admitted():`) for as long as the request runs; the `n` choices run
concurrently as separate engine requests; at the end one request-log line is written and the
metrics are updated, with the served variant as a label.

A key with a token quota reserves its request's prompt + n × max_tokens at admission and settles
when the request ends, however it ends (`ratelimit` has the rules); to know those sizes then, a local
model prepares the request at admission (prompt tokenized, max_tokens within the context) and the
engine gets it prepared, so the prompt is tokenized once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Request
from prometheus_client import Histogram

from tuneloop.serve.client import Delta, EngineClient, GenerateRequest
from tuneloop.serve.errors import CLIENT_CLOSED, APIError, ClientGone
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.limits import ConcurrencyGate
from tuneloop.serve.ratelimit import RateLimiter, Reservation, exceeds_quota

if TYPE_CHECKING:
    from tuneloop.serve.gateway import Gateway  # which builds `Served`s: a type-only import


@dataclass
class Served:
    """A served model name: its engine client and its admission gate."""

    name: str
    client: EngineClient
    gate: ConcurrencyGate
    variant: str = "default"
    key: str = ""  # its name in `Gateway.models` (a route's copy keeps its variant's)

    def __post_init__(self) -> None:
        self.key = self.key or self.name

    @property
    def version(self) -> str | None:
        """The model version answering (a registry "NAME/VERSION"), when the client knows it."""
        return self.client.version


@dataclass
class Generation:
    """One request's generation: its admission, its engine streams and its accounting (metrics, the
    request-log line, the token quota)."""

    gw: Gateway
    request: Request
    key: ApiKey
    served: Served
    response_id: str
    choices: list[GenerateRequest]
    body: dict[str, Any]  # the request as received, for the log
    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str | None] = field(default_factory=list)
    _itl: Histogram | None = None  # the inter-token histogram of this request's labels
    # the token quota: the reservation until settled, and what the request used (`tokens_used`)
    reservation: Reservation | None = None
    started: bool = False  # past the gate, handed to the engine: its prompt is paid for from here
    refused: bool = False  # the engine refused it (a 4xx before any token): nothing is charged
    finished: bool = False  # logged (`finish`): once, whichever way the request ends
    prompt_counted: int = 0  # the prompt's tokens as counted at admission (for the reservation)
    generated: list[int] = field(default_factory=list)  # tokens generated so far, per choice
    asked: list[GenerateRequest] = field(default_factory=list)  # the choices before `prepare`

    def __post_init__(self) -> None:
        received = getattr(self.request.state, "received", None)  # set by the middleware on arrival
        if received is not None:
            self.start = received
        self.generated = [0] * len(self.choices)
        self.asked = self.choices

    @property
    def timeout_s(self) -> float:
        """The request's time limit, the stream's as a whole (limits.request_timeout_s)."""
        return self.gw.config.limits.request_timeout_s

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """The request's admitted life: the key's quota and a running slot of the model (429 beyond
        them, counted and logged), held for the body of the `async with` and released however it
        ends. An error that ends the body is logged with its status (a client gone: 499; time up:
        504) unless the body logged the end itself (a stream whose headers are sent)."""
        try:
            await self._admit()
        except APIError as e:  # refused (quota, overload): counted and logged like any other answer
            self.gw.metrics.rejected.labels(e.code or str(e.status), self.served.name).inc()
            await self.finish(e.status, error=e.message)
            raise
        try:
            yield
        except ClientGone as e:  # the engine requests were aborted: logged with what was generated
            await self.finish(CLIENT_CLOSED, e.response, "client disconnected")
            raise
        except TimeoutError:
            await self.finish(504, error="timeout")
            raise APIError(504, f"the request took longer than {self.timeout_s:g}s", "timeout") from None
        except APIError as e:
            await self.finish(e.status, error=e.message)
            raise
        except Exception as e:
            await self.finish(500, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            # shielded: a stream cancelled by Starlette after a disconnect would cancel every await
            # here again, and the slot and the token count must not be lost
            with anyio.CancelScope(shield=True):
                await self._release()

    async def _admit(self) -> None:
        """Quota, then a running slot (raises 429); `_release` undoes it."""
        await self._reserve(self.gw.limiter)
        try:
            queued = await self.served.gate.acquire()
        except BaseException:  # refused (overload) or the client left while queued: nothing ran
            await self._settle()
            raise
        self.started = True
        # the client as of now, held before the next await: a reload while this request waited
        # swapped it, and a replaced client is closed once nothing holds it
        current = self.gw.models.get(self.served.key)
        if current is not None and current.client is not self.served.client:
            self.served = replace(self.served, client=current.client)
            self.choices = self.asked  # ids of the old model's tokenizer: the new one tokenizes again
        self.served.client.active += 1  # a client replaced by a reload is closed only at zero
        self.gw.metrics.queue.labels(*self.labels).observe(queued)
        self.gw.mirror(self.served.name, self.asked)  # a route's shadow gets admitted requests only

    async def _release(self) -> None:
        self.served.client.active -= 1
        await self.served.gate.release()
        await self._settle()  # here: every way a request ends releases it, a finish may not follow

    async def _reserve(self, limiter: RateLimiter) -> None:
        """Count the request against the key's rpm and reserve prompt + n × max_tokens of its tpm."""
        key, tokens = self.key, 0
        if key.rpm is None and key.tpm is None:
            return
        if key.tpm is not None:
            exact = await self._prepare()
            prompt, max_tokens, n = self.prompt_counted, self.choices[0].max_tokens, len(self.choices)
            tokens = prompt + max_tokens * n
            if tokens > key.tpm:
                defaulted = self.body.get("max_tokens", self.body.get("max_completion_tokens")) is None
                raise exceeds_quota(key.tpm, prompt, max_tokens, n, not exact, defaulted)
        self.reservation = await limiter.admit(key.id, key.rpm, key.tpm, tokens, self.tokens_used)

    async def _prepare(self) -> bool:
        """Size the request for its reservation (`prompt_counted`, the choices' max_tokens); True when
        exact: a local model prepares it now (prompt tokenized once: the engine gets the ids, and
        max_tokens within the context); another (an upstream) has its prompt estimated
        (`estimate_prompt_tokens`) and keeps max_tokens as asked (or the server's cap)."""
        first = self.choices[0]
        ready = await self.served.client.prepare(first)  # the 400s: empty, too long, no context left
        if ready is None:
            exact = first.prompt_ids is not None
            self.prompt_counted = len(first.prompt_ids) if exact else estimate_prompt_tokens(first)
            return exact
        self.choices = [replace(ready, request_id=c.request_id, seed=c.seed) for c in self.choices]
        self.prompt_counted = len(ready.prompt_ids or [])
        return True

    def tokens_used(self) -> int:
        """What the request costs its key's token quota so far: nothing until it started or if the
        engine refused it, then its prompt and every token generated (a request stopped early pays
        for what it got)."""
        if not self.started:
            return 0
        generated = sum(self.generated)
        return generated if self.refused else (self.prompt_tokens or self.prompt_counted) + generated

    async def _settle(self) -> None:
        reservation, self.reservation = self.reservation, None  # once, whichever way comes first
        if reservation is not None:
            await self.gw.limiter.settle(reservation, self.tokens_used())

    @property
    def labels(self) -> tuple[str, str]:
        return (self.served.name, self.served.variant)

    async def stream(self) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, delta) as they come, over every choice."""
        self.finish_reasons = [None] * len(self.choices)
        source = (
            self._one(0)
            if len(self.choices) == 1
            else _merge([self._one(i) for i in range(len(self.choices))])
        )
        async with aclosing(source):
            try:
                async for index, delta in source:
                    yield index, self._account(index, delta)
            except APIError as e:
                self.refused = e.status < 500 and not any(self.generated)  # a bad request, not a fault
                raise

    def _account(self, index: int, delta: Delta) -> Delta:
        """Token timings (TTFT, inter-token), tokens generated so far and, on a choice's last delta,
        its token counts."""
        now = time.monotonic()
        if delta.completion_tokens:  # a running count (local engines), or the final one
            self.generated[index] = delta.completion_tokens
        elif delta.text:  # a client without running counts (an upstream): about one token per delta
            self.generated[index] += 1
        if delta.text:
            if self.first_token is None:
                self.first_token = now
                m = self.gw.metrics
                m.ttft.labels(*self.labels).observe(now - self.start)
                self._itl = m.itl.labels(*self.labels)  # once: labels() takes a lock and a lookup
            elif self.last_token is not None:
                self._itl.observe(now - self.last_token)
            self.last_token = now
        # counts so far, not only at the end: a request that ends early (client gone: 499) is logged
        # with the prompt and the tokens it generated
        self.prompt_tokens = max(self.prompt_tokens, delta.prompt_tokens)
        self.completion_tokens = sum(self.generated)
        if delta.finish_reason is not None:
            self.finish_reasons[index] = delta.finish_reason
        return delta

    async def _one(self, index: int) -> AsyncIterator[tuple[int, Delta]]:
        async with aclosing(self.served.client.generate(self.choices[index])) as deltas:
            async for delta in deltas:
                yield index, delta

    async def finish(
        self, status: int, response: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Metrics and the request-log line, once: a second call (an error after the end) does nothing."""
        if self.finished:
            return
        self.finished = True
        gw, latency = self.gw, time.monotonic() - self.start
        m = gw.metrics
        route = self.request.url.path
        m.requests.labels(route, str(status), *self.labels).inc()
        if status == 200:
            m.e2e.labels(*self.labels).observe(latency)
            m.prompt_tokens.labels(*self.labels).inc(self.prompt_tokens)
            m.generation_tokens.labels(*self.labels).inc(self.completion_tokens)
            for reason in self.finish_reasons:
                m.success.labels(reason or "abort", *self.labels).inc()
        user = self.body.get("user") or self.body.get("safety_identifier")
        if status == 200:  # what feedback on this answer is labelled with (bounded; serve.feedback)
            gw.recent_responses.add(
                self.response_id, self.served.name, self.served.variant, user, self.key.id
            )  # the key that may rate it, too
        if gw.request_log is not None:
            gw.request_log.write(
                {
                    "request_id": self.request.state.request_id,
                    "response_id": self.response_id,
                    "key_id": self.key.id,
                    "user": user,
                    "metadata": self.body.get("metadata"),  # OpenAI's tags, e.g. {"workload": ...}
                    "model": self.served.name,
                    "variant": self.served.variant,
                    "model_version": self.served.version,
                    "route": route,
                    "status": status,
                    "latency_s": round(latency, 4),
                    "ttft_s": None if self.first_token is None else round(self.first_token - self.start, 4),
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "request": self.body,
                    "response": response,
                    "error": error,
                }
            )
        await self._settle()  # a no-op after `_release` (it settles first)


def estimate_prompt_tokens(request: GenerateRequest) -> int:
    """A bound on a prompt's tokens that needs no tokenizer (an upstream's is not ours): its UTF-8
    bytes (a byte-level BPE token is at least one byte) plus 8 per chat message for the template.
    It over-reserves (English is ~4 bytes a token); the refund at the end gives the rest back."""
    if request.messages is not None:
        tools = len(json.dumps(request.tools).encode()) if request.tools else 0  # rendered in the prompt
        calls = sum(len(json.dumps(m.get("tool_calls", "")).encode()) for m in request.messages)
        return sum(len(m.get("content", "").encode()) + 8 for m in request.messages) + tools + calls
    return len((request.prompt or "").encode())


async def _merge(streams: list[AsyncIterator[tuple[int, Delta]]]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave several async iterators; an error in one cancels the others."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[tuple[int, Delta]]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            await queue.put(e)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
