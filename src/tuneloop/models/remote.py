"""Calls to an OpenAI-compatible server from sync code, concurrent and paced: what the LLM judge's
upstream backend (evaluation) and `data synth`'s upstream teacher (flows) share. The `openai`
client itself brings the retries (408/409/429/5xx, timeouts, broken connections; exponential
backoff honouring Retry-After)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from tuneloop.errors import TuneloopError

T = TypeVar("T")
R = TypeVar("R")


def api_key(env_name: str | None, setting: str, hint_tail: str = "") -> str:
    """The key from the named environment variable; "EMPTY" without one (servers without auth still
    need the client to send something). A named variable that is unset is an error naming `setting`."""
    if not env_name:
        return "EMPTY"
    key = os.environ.get(env_name, "")
    if not key:
        raise TuneloopError(
            f"{setting}: the environment variable {env_name} is not set",
            hint=f"export {env_name}=... (the upstream's API key){hint_tail}",
        )
    return key


def error_message(e: Exception) -> str:
    """The server's own error message where the `openai` client kept one, else the exception's."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(e, "message", e))


class Pace:
    """At most `per_minute` request starts a minute, evenly spaced (no bursts that would earn 429s)."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        start = max(now, self.next)  # single-threaded event loop: no lock needed between these lines
        self.next = start + self.interval
        await asyncio.sleep(start - now)


async def gather_paced(
    items: Sequence[T], one: Callable[[T], Awaitable[R]], concurrency: int, per_minute: float | None
) -> list[R]:
    """`one(item)` for every item, at most `concurrency` at a time and `per_minute` starts a minute;
    results in the items' order."""
    slots, pace = asyncio.Semaphore(concurrency), Pace(per_minute)

    async def paced(item: T) -> R:
        async with slots:
            await pace.wait()
            return await one(item)

    return list(await asyncio.gather(*(paced(i) for i in items)))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code, also when this thread already runs an event loop
    (a caller inside the gateway or a notebook): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
