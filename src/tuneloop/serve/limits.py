"""Backpressure and quotas: a bounded gate per model, requests and tokens per minute per key.

Beyond `max_concurrency` running and `max_queue` waiting requests a model answers 429 with
Retry-After at once, so overload costs a small response, never unbounded memory. The per-key
windows are in memory (one replica); several replicas would share them in Redis.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
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


class KeyQuota:
    """Sliding one-minute windows of requests and tokens for one key."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = rpm, tpm
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()

    def check(self, now: float) -> None:
        self._expire(now)
        if self.rpm is not None and len(self.requests) >= self.rpm:
            self._refuse("requests", self.requests[0] + 60 - now)
        used = sum(n for _, n in self.tokens)
        if self.tpm is not None and used >= self.tpm:
            self._refuse("tokens", self.tokens[0][0] + 60 - now)
        self.requests.append(now)

    def add_tokens(self, now: float, n: int) -> None:
        if self.tpm is not None and n:
            self.tokens.append((now, n))

    def _expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - 60:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - 60:
            self.tokens.popleft()

    @staticmethod
    def _refuse(what: str, wait: float) -> None:
        raise APIError(
            429,
            f"rate limit reached: {what} per minute for this key",
            "rate_limit_exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


class RateLimiter:
    def __init__(self) -> None:
        self._quotas: dict[str, KeyQuota] = {}

    def check(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        if rpm is None and tpm is None:
            return
        quota = self._quotas.setdefault(key_id, KeyQuota(rpm, tpm))
        quota.rpm, quota.tpm = rpm, tpm  # limits edited on the key apply at once
        quota.check(time.monotonic())

    def add_tokens(self, key_id: str, n: int) -> None:
        quota = self._quotas.get(key_id)
        if quota is not None:
            quota.add_tokens(time.monotonic(), n)
