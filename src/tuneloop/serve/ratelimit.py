"""Per-key quotas: requests (rpm) and tokens (tpm) per minute, in this process or shared in Redis.

Requests are counted when admitted. Tokens go through a reservation, so that a quota holds however
requests end and however many run at once:

1. Admission reserves the most a request can use: its prompt's tokens plus `n` × max_tokens (the
   server's `limits.max_tokens_default` when the request gives none). It is admitted only if the
   tokens charged in the last minute, the key's open reservations and this one fit in tpm; otherwise
   429 with Retry-After. A reservation larger than tpm itself could never fit: 400 at once
   (`request_exceeds_quota`), never a 429 to retry forever.
2. While the request runs, its reservation holds that much of the quota (concurrent requests count)
   and covers the tokens it generates.
3. At the end, however it ends (done, client gone, timeout, error), the reservation turns into usage:
   the key is charged what the request used (see `Generation.tokens_used`) in the minute it ended,
   and the rest is refunded.

`limits.backend: memory` keeps exact sliding one-minute windows in this process (one replica).
`limits.backend: redis` keeps them in Redis so that every replica behind a load balancer enforces
one quota together: per key, hashes of one-second buckets (requests, tokens charged) and a hash of
open reservations, all read, pruned and updated by Lua scripts, so a check-and-reserve is atomic
across replicas and the clock is Redis's (`TIME`). A reservation there is a lease
(`limits.reservation_lease_s`): its replica renews all of its open reservations in one pipeline every
third of the lease, storing the tokens each has used so far. A replica that dies stops renewing, so
its reservations expire within one lease and are charged the usage they last reported. Nothing goes
to Redis per token: one call at admission, one at the end, and the batched renewals.

A Redis that cannot be reached is never skipped silently: with `limits.redis_unavailable: reject`
(the default) requests of keys with quotas get a 503 that says so; with `allow` they go through
unlimited, each one counted in `tuneloop_rate_limit_store_errors` and logged (at most every 10 s).
Keys without quotas never touch Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from prometheus_client import Counter

from tuneloop.errors import missing_extra
from tuneloop.serve.config import LimitsConfig
from tuneloop.serve.errors import APIError

log = logging.getLogger("tuneloop.serve")
WINDOW_S = 60
# reservation ids: unique across replicas (a random prefix per process, new in a forked worker too)
# without a syscall per request
_PROCESS, _SERIAL = os.urandom(6).hex(), itertools.count()


def _new_prefix() -> None:
    global _PROCESS
    _PROCESS = os.urandom(6).hex()


os.register_at_fork(after_in_child=_new_prefix)


def _new_id() -> str:
    return f"{_PROCESS}-{next(_SERIAL)}"


@dataclass(eq=False)
class Reservation:
    """Tokens of a key's quota held by one admitted request until it is settled."""

    key_id: str
    tokens: int
    usage: Callable[[], int]  # the tokens the request has used so far (read by lease renewals)
    expires: float  # monotonic: an unsettled reservation (a bug) is dropped then, never held forever
    id: str = field(default_factory=_new_id)
    held: bool = True  # Redis: recorded there and renewed (False when it was down, or the lease ran out)
    reported: int = 0  # Redis: the usage the last renewal stored (charged if the lease runs out)


class RateLimiter(Protocol):
    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, usage: Callable[[], int]
    ) -> Reservation | None:
        """Count one request and reserve `tokens` of the key's tpm, or raise 429 (no room) / 503
        (store unreachable). None for keys without a token quota (nothing to settle)."""

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Charge `used` tokens and refund the rest of the reservation; once per reservation."""

    async def status(self) -> str | None:
        """None when usable, else why not (for /ready)."""

    async def close(self) -> None: ...


def build_rate_limiter(config: LimitsConfig, errors: Counter | None = None) -> RateLimiter:
    """The limiter `limits.backend` names; `errors` is a Prometheus counter labelled by action."""
    # no request outlives its time limit; the queue wait before it is bounded by the ones ahead
    max_age_s = 2 * config.request_timeout_s + config.reservation_lease_s
    if config.backend == "redis":
        return RedisRateLimiter(
            config.redis_url or "",
            prefix=config.redis_prefix,
            timeout_s=config.redis_timeout_s,
            on_unavailable=config.redis_unavailable,
            errors=errors,
            lease_s=config.reservation_lease_s,
            max_age_s=max_age_s,
        )
    return MemoryRateLimiter(max_age_s)


def refuse(what: str, wait_s: float, detail: str = "") -> APIError:
    return APIError(
        429,
        f"rate limit reached: {what} per minute for this key{detail}",
        "rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


def refuse_tokens(wait_s: float, tokens: int, left: int, tpm: int) -> APIError:
    detail = (
        f" ({tpm}): this request needs up to {tokens} (its prompt + max_tokens for each choice) and "
        f"{max(left, 0)} are left (the rest was used in the last minute or is held by requests running)"
    )
    return refuse("tokens", wait_s, detail)


def exceeds_quota(
    tpm: int, prompt: int, max_tokens: int, n: int, estimated: bool, defaulted: bool
) -> APIError:
    """A request whose reservation alone is more than the key's tpm: it could never run."""
    counted = "estimated at" if estimated else "of"
    choices = f" × n={n}" if n > 1 else ""
    given = (
        " (none was given: the server's default, what the context leaves after the prompt up to "
        "limits.max_tokens_default or limits.max_completion_tokens)"
        if defaulted
        else ""
    )
    fits = tpm - prompt
    hint = f"set max_tokens to at most {fits // n}" if fits >= n else "shorten the prompt"
    return APIError(
        400,
        f"this request needs up to {prompt + max_tokens * n} tokens (a prompt {counted} {prompt} + "
        f"max_tokens {max_tokens}{choices}{given}) but this key's quota is {tpm} tokens per minute, "
        f"so it could never run; {hint}, or ask for a larger quota",
        "request_exceeds_quota",
        "max_tokens",
    )


def _wait(buckets: Iterable[tuple[float, int]], excess: int, now: float) -> float:
    """Seconds until `excess` tokens charged (oldest first) have left the window."""
    for when, n in buckets:
        excess -= n
        if excess <= 0:
            return when + WINDOW_S - now
    return 1.0  # requests running hold the rest: they free it when they end


# ---------------------------------------------------------------- in this process


class KeyQuota:
    """Sliding one-minute windows of one key's requests and charged tokens, and its open reservations."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = rpm, tpm
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()  # (when charged, tokens), oldest first
        self.charged = 0  # the sum of `tokens`
        self.open: dict[str, Reservation] = {}

    def admit(self, now: float, tokens: int) -> None:
        self._expire(now)
        if self.rpm is not None and len(self.requests) >= self.rpm:
            raise refuse("requests", self.requests[0] + WINDOW_S - now)
        if self.tpm is not None:
            held = sum(r.tokens for r in self.open.values())
            excess = self.charged + held + tokens - self.tpm
            if excess > 0:
                left = self.tpm - self.charged - held
                raise refuse_tokens(_wait(self.tokens, excess, now), tokens, left, self.tpm)
        self.requests.append(now)

    def settle(self, now: float, reservation: Reservation, used: int) -> None:
        if self.open.pop(reservation.id, None) is not None:  # not dropped (and charged) as stale
            self._charge(now, used)

    def _charge(self, now: float, n: int) -> None:
        if n > 0:
            self.tokens.append((now, n))
            self.charged += n

    def _expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.charged -= self.tokens.popleft()[1]
        for r in [r for r in self.open.values() if r.expires < now]:
            log.warning(
                "a token reservation of key %s was never settled; dropped after its max age", r.key_id
            )
            self.settle(now, r, r.usage())


class MemoryRateLimiter:
    def __init__(self, max_age_s: float = 1260.0) -> None:
        self.max_age_s = max_age_s
        self._quotas: dict[str, KeyQuota] = {}

    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, usage: Callable[[], int]
    ) -> Reservation | None:
        if rpm is None and tpm is None:
            return None
        quota = self._quotas.setdefault(key_id, KeyQuota(rpm, tpm))
        quota.rpm, quota.tpm = rpm, tpm  # limits edited on the key apply at once
        now = time.monotonic()
        quota.admit(now, tokens)
        if tpm is None:
            return None
        reservation = Reservation(key_id, tokens, usage, now + self.max_age_s)
        quota.open[reservation.id] = reservation
        return reservation

    async def settle(self, reservation: Reservation, used: int) -> None:
        quota = self._quotas.get(reservation.key_id)
        if quota is not None:
            quota.settle(time.monotonic(), reservation, used)

    async def status(self) -> str | None:
        return None

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------- shared in Redis

# Per key (one hash slot): `requests` and `tokens`, hashes of unix second -> count; `reserved`, a hash
# of reservation id -> "tokens used expires_ms" (used: what its replica last reported).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: requests, tokens, reserved. ARGV: rpm, tpm (-1 = none), window, tokens to reserve, reservation
# id, lease_ms. Returns {0} when admitted, {1, wait_s} when requests are used up, {2, wait_s, tokens
# left} when the reservation does not fit.
_ADMIT = (
    _NOW
    + """
local rpm, tpm, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, lease = tonumber(ARGV[4]), tonumber(ARGV[6])
local function buckets(key)  -- the window's {second, count}, oldest first (older ones deleted), and their sum
  local list, total = {}, 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local second = tonumber(all[i])
    if second <= now - window then
      redis.call('HDEL', key, all[i])
    else
      list[#list + 1] = {second, tonumber(all[i + 1])}
      total = total + tonumber(all[i + 1])
    end
  end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return list, total
end
local function held()  -- tokens of the live reservations; expired ones are charged what they reported
  local total = 0
  local open = redis.call('HGETALL', KEYS[3])
  for i = 1, #open, 2 do
    local tokens, used, expires = string.match(open[i + 1], '(%d+) (%d+) (%d+)')
    if tonumber(expires) <= now_ms then  -- its replica stopped renewing it: it died mid-request
      redis.call('HDEL', KEYS[3], open[i])
      local second = math.floor(tonumber(expires) / 1000)
      if tonumber(used) > 0 and second > now - window then
        redis.call('HINCRBY', KEYS[2], second, used)
        redis.call('EXPIRE', KEYS[2], window + 1)
      end
    else
      total = total + tonumber(tokens)
    end
  end
  return total
end
if rpm >= 0 then
  local list, n = buckets(KEYS[1])
  if n >= rpm then return {1, list[1][1] + window - now} end
end
if tpm >= 0 then
  local reserved = held()
  local list, charged = buckets(KEYS[2])
  local excess = charged + reserved + want - tpm
  if excess > 0 then
    local wait = 1  -- requests running hold the rest: they free it when they end
    for _, b in ipairs(list) do
      excess = excess - b[2]
      if excess <= 0 then wait = b[1] + window - now break end
    end
    return {2, wait, tpm - charged - reserved}
  end
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], now, 1)
  redis.call('EXPIRE', KEYS[1], window + 1)
end
if tpm >= 0 then
  redis.call('HSET', KEYS[3], ARGV[5], string.format('%d 0 %d', want, now_ms + lease))
  if redis.call('PTTL', KEYS[3]) < lease + 1000 then redis.call('PEXPIRE', KEYS[3], lease + 1000) end
end
return {0}
"""
)

# KEYS: reserved. ARGV: reservation id, tokens used so far, lease_ms. Returns 0 when the lease had run
# out (the reservation was charged and dropped).
_RENEW = (
    _NOW
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local lease = tonumber(ARGV[3])
local tokens = string.match(v, '^(%d+)')
redis.call('HSET', KEYS[1], ARGV[1], string.format('%s %d %d', tokens, tonumber(ARGV[2]), now_ms + lease))
if redis.call('PTTL', KEYS[1]) < lease + 1000 then redis.call('PEXPIRE', KEYS[1], lease + 1000) end
return 1
"""
)

# KEYS: tokens, reserved. ARGV: reservation id, tokens used, usage last reported, window. Ends the
# reservation and charges its usage; one whose lease ran out was charged what it reported then.
_SETTLE = """
local now = tonumber(redis.call('TIME')[1])
local used = tonumber(ARGV[2])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then used = used - tonumber(ARGV[3]) end
if used > 0 then
  redis.call('HINCRBY', KEYS[1], now, used)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]) + 1)
end
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
        errors: Counter | None = None,
        lease_s: float = 30.0,
        max_age_s: float = 1260.0,
    ):
        try:  # here: only a gateway with `limits.backend: redis` pays for importing it (~0.7 s)
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
        self.lease_s, self.max_age_s = lease_s, max_age_s
        # one quick retry (a dropped pooled connection), never a backoff that holds requests up
        self.redis = aredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._admit = self.redis.register_script(_ADMIT)
        self._renew = self.redis.register_script(_RENEW)
        self._settle = self.redis.register_script(_SETTLE)
        self._open: dict[str, Reservation] = {}  # this replica's unsettled reservations
        self._renewer: asyncio.Task | None = None
        self._last_warning = 0.0

    def _keys(self, key_id: str) -> list[str]:
        # {key_id}: one hash slot for all three, so the scripts also run on Redis Cluster
        base = f"{self.prefix}:{{{key_id}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:reserved"]

    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, usage: Callable[[], int]
    ) -> Reservation | None:
        if rpm is None and tpm is None:
            return None
        reservation = Reservation(key_id, tokens, usage, time.monotonic() + self.max_age_s)
        args = [-1 if rpm is None else rpm, -1 if tpm is None else tpm, WINDOW_S, tokens]
        args += [reservation.id, int(self.lease_s * 1000)]
        try:
            verdict = await self._admit(keys=self._keys(key_id), args=args)
        except Exception as e:  # redis.RedisError and OSError: the store, not the request, failed
            self._unavailable(e)  # raises, or lets the request through uncounted...
            if tpm is None:
                return None
            reservation.held = False  # ...but its tokens are still charged at the end, if it is back
            return reservation
        if int(verdict[0]) == 1:
            raise refuse("requests", int(verdict[1]))
        if int(verdict[0]) == 2:
            raise refuse_tokens(int(verdict[1]), tokens, int(verdict[2]), tpm or 0)
        if tpm is None:
            return None
        self._open[reservation.id] = reservation
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())
        return reservation

    async def settle(self, reservation: Reservation, used: int) -> None:
        # out of the renewals first, synchronously: whatever happens next, the lease can run out
        self._open.pop(reservation.id, None)
        keys = self._keys(reservation.key_id)[1:]
        args = [reservation.id, used, reservation.reported, WINDOW_S]
        try:  # shielded: a request cancelled (client gone) while settling still settles
            await asyncio.shield(self._settle(keys=keys, args=args))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the request is answered already: its tokens go uncounted, loudly
            self._count("tokens_lost")
            self._warn(f"tokens of a request were not counted: {self._why(e)}")

    async def _renew_forever(self) -> None:
        while self._open:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except Exception:  # a bug here must not stop the renewals of later requests
                log.exception("renewing the token reservations failed")

    async def renew(self) -> None:
        """Extend the lease of every open reservation of this replica, with the usage so far (one pipeline)."""
        now = time.monotonic()
        live = []
        for r in list(self._open.values()):
            if r.expires < now:  # never settled (a bug): stop renewing, its lease runs out
                log.warning(
                    "a token reservation of key %s was never settled; its lease is left to expire", r.key_id
                )
                self._open.pop(r.id, None)
            elif r.held:
                live.append((r, r.usage()))
        if not live:
            return
        lease_ms = int(self.lease_s * 1000)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r, used in live:
                    await self._renew(keys=self._keys(r.key_id)[2:], args=[r.id, used, lease_ms], client=pipe)
                renewed = await pipe.execute()
        except Exception as e:  # the leases run on; the next renewal may still be in time
            self._count("renew_failed")
            self._warn(f"token reservations were not renewed: {self._why(e)}")
            return
        for (r, used), ok in zip(live, renewed, strict=True):
            if int(ok):
                r.reported = used
            else:  # expired meanwhile (Redis stalled or flushed): it was charged `reported` then
                r.held = False
                self._count("lease_lost")
                self._warn(f"a token reservation of key {r.key_id} expired before it was renewed")

    async def status(self) -> str | None:
        try:
            await self.redis.ping()
        except Exception as e:
            return self._why(e)
        return None

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
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
