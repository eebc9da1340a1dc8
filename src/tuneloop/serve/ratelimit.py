"""Per-key quotas: requests and tokens per minute, in this process or shared in Redis.

`limits.backend: memory` keeps exact sliding one-minute windows in this process (one replica).
`limits.backend: redis` keeps them in Redis so that every replica behind a load balancer enforces
one limit together: each key has two hashes (requests, tokens) of one-second buckets, read, pruned
and incremented by one Lua script, so a check-and-count is atomic across replicas and the clock
is Redis's (`TIME`), not each replica's.

A Redis that cannot be reached is never skipped silently: with `limits.redis_unavailable: reject`
(the default) requests of keys with quotas get a 503 that says so; with `allow` they go through
unlimited, each one counted in `tuneloop_rate_limit_store_errors` and logged (at most every 10 s).
Keys without quotas never touch Redis.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any, Protocol
from urllib.parse import urlsplit

from tuneloop.errors import missing_extra
from tuneloop.serve.config import LimitsConfig
from tuneloop.serve.errors import APIError

log = logging.getLogger("tuneloop.serve")
WINDOW_S = 60


class RateLimiter(Protocol):
    async def check(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        """Count one request for the key, or raise 429 (quota used up) / 503 (store unreachable)."""

    async def add_tokens(self, key_id: str, n: int) -> None:
        """Count the tokens of a finished request (prompt + completion)."""

    async def status(self) -> str | None:
        """None when usable, else why not (for /ready)."""

    async def close(self) -> None: ...


def build_rate_limiter(config: LimitsConfig, errors: Any = None) -> RateLimiter:
    """The limiter `limits.backend` names; `errors` is a Prometheus counter labelled by action."""
    if config.backend == "redis":
        return RedisRateLimiter(
            config.redis_url or "",
            prefix=config.redis_prefix,
            timeout_s=config.redis_timeout_s,
            on_unavailable=config.redis_unavailable,
            errors=errors,
        )
    return MemoryRateLimiter()


def refuse(what: str, wait_s: float) -> APIError:
    return APIError(
        429,
        f"rate limit reached: {what} per minute for this key",
        "rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


# ---------------------------------------------------------------- in this process


class KeyQuota:
    """Sliding one-minute windows of requests and tokens for one key."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = rpm, tpm
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()

    def check(self, now: float) -> None:
        self._expire(now)
        if self.rpm is not None and len(self.requests) >= self.rpm:
            raise refuse("requests", self.requests[0] + WINDOW_S - now)
        used = sum(n for _, n in self.tokens)
        if self.tpm is not None and used >= self.tpm:
            raise refuse("tokens", self.tokens[0][0] + WINDOW_S - now)
        self.requests.append(now)

    def add_tokens(self, now: float, n: int) -> None:
        if self.tpm is not None and n:
            self.tokens.append((now, n))

    def _expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens.popleft()


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._quotas: dict[str, KeyQuota] = {}

    async def check(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        if rpm is None and tpm is None:
            return
        quota = self._quotas.setdefault(key_id, KeyQuota(rpm, tpm))
        quota.rpm, quota.tpm = rpm, tpm  # limits edited on the key apply at once
        quota.check(time.monotonic())

    async def add_tokens(self, key_id: str, n: int) -> None:
        quota = self._quotas.get(key_id)
        if quota is not None:
            quota.add_tokens(time.monotonic(), n)

    async def status(self) -> str | None:
        return None

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------- shared in Redis

# KEYS: requests hash, tokens hash (fields: unix second -> count). ARGV: rpm, tpm (-1 = none), window.
# Returns {0, 0} when counted, {1, wait_s} when requests are used up, {2, wait_s} for tokens.
_CHECK = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[3])
local function used(key)
  local total, oldest = 0, now
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local second = tonumber(all[i])
    if second <= now - window then
      redis.call('HDEL', key, all[i])
    else
      total = total + tonumber(all[i + 1])
      if second < oldest then oldest = second end
    end
  end
  return total, oldest
end
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if rpm >= 0 then
  local n, oldest = used(KEYS[1])
  if n >= rpm then return {1, oldest + window - now} end
end
if tpm >= 0 then
  local n, oldest = used(KEYS[2])
  if n >= tpm then return {2, oldest + window - now} end
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], now, 1)
  redis.call('EXPIRE', KEYS[1], window + 1)
end
return {0, 0}
"""

# KEYS: tokens hash. ARGV: tokens, window.
_ADD = """
local now = tonumber(redis.call('TIME')[1])
redis.call('HINCRBY', KEYS[1], now, tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


class RedisRateLimiter:
    def __init__(
        self,
        url: str,
        prefix: str = "tuneloop:ratelimit",
        timeout_s: float = 0.5,
        on_unavailable: str = "reject",
        errors: Any = None,
    ):
        try:
            import redis.asyncio as aredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise missing_extra("redis", "serve") from None
        self.url, self.prefix, self.on_unavailable, self.errors = (
            _safe_url(url),
            prefix,
            on_unavailable,
            errors,
        )
        # one quick retry (a dropped pooled connection), never a backoff that holds requests up
        self.redis = aredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._check = self.redis.register_script(_CHECK)
        self._add = self.redis.register_script(_ADD)
        self._last_warning = 0.0

    def _keys(self, key_id: str) -> list[str]:
        # {key_id}: one hash slot for both, so the script also runs on Redis Cluster
        return [f"{self.prefix}:{{{key_id}}}:requests", f"{self.prefix}:{{{key_id}}}:tokens"]

    async def check(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        if rpm is None and tpm is None:
            return
        args = [-1 if rpm is None else rpm, -1 if tpm is None else tpm, WINDOW_S]
        try:
            verdict, wait = await self._check(keys=self._keys(key_id), args=args)
        except Exception as e:  # redis.RedisError and OSError: the store, not the request, failed
            self._unavailable(e)
            return
        if int(verdict) == 1:
            raise refuse("requests", int(wait))
        if int(verdict) == 2:
            raise refuse("tokens", int(wait))

    async def add_tokens(self, key_id: str, n: int) -> None:
        if n <= 0:
            return
        try:
            await self._add(keys=self._keys(key_id)[1:], args=[n, WINDOW_S])
        except Exception as e:  # the request is answered already: its tokens go uncounted, loudly
            self._count("tokens_lost")
            self._warn(f"tokens of a request were not counted: {self._why(e)}")

    async def status(self) -> str | None:
        try:
            await self.redis.ping()
        except Exception as e:
            return self._why(e)
        return None

    async def close(self) -> None:
        await self.redis.aclose()

    def _why(self, e: Exception) -> str:
        return f"the rate-limit store (Redis at {self.url}) is unavailable: {type(e).__name__}: {e}"

    def _unavailable(self, e: Exception) -> None:
        if self.on_unavailable == "allow":
            self._count("allowed")
            self._warn(f"{self._why(e)}; letting the request through (limits.redis_unavailable=allow)")
            return
        self._count("rejected")
        self._warn(f"{self._why(e)}; refusing requests with quotas (limits.redis_unavailable=reject)")
        raise APIError(
            503,
            f"{self._why(e)}; requests with quotas are refused until it is back "
            "(limits.redis_unavailable=reject)",
            "rate_limit_store_unavailable",
            headers={"Retry-After": "1"},
        )

    def _count(self, action: str) -> None:
        if self.errors is not None:
            self.errors.labels(action).inc()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(message)
