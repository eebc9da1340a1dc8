"""Backpressure: a bounded gate per model (per-key quotas are in `ratelimit`).

Beyond `max_concurrency` running and `max_queue` waiting requests a model answers 429 with
Retry-After at once, so overload costs a small response, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tuneloop.serve.errors import APIError


class ConcurrencyGate:
    def __init__(self, max_concurrency: int, max_queue: int, retry_after_s: int = 1):
        self.max_concurrency, self.max_queue, self.retry_after_s = max_concurrency, max_queue, retry_after_s
        self.running = 0
        self.waiting = 0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one running slot; yields the seconds spent queued."""
        queued = await self.acquire()
        try:
            yield queued
        finally:
            await self.release()

    async def acquire(self) -> float:
        if self.running >= self.max_concurrency and self.waiting >= self.max_queue:
            raise APIError(
                429,
                "the server is overloaded; retry later",
                "overloaded",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        start = time.monotonic()
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.running < self.max_concurrency)
            finally:
                self.waiting -= 1
            self.running += 1
        return time.monotonic() - start

    async def release(self) -> None:
        async with self._cond:
            self.running -= 1
            # all, not one: a waiter woken just as its client left would otherwise swallow the slot
            self._cond.notify_all()
