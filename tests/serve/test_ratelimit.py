"""Per-key quotas shared in a real Redis: several gateway replicas enforce one limit together."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack

import httpx
import pytest

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore
from tuneloop.serve.ratelimit import RedisRateLimiter

from .conftest import RedisServer


def config(**limits) -> ServeConfig:
    return ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused"}], "limits": limits})


def redis_config(url: str, **limits) -> ServeConfig:
    return config(backend="redis", redis_url=url, **limits)


def ask(url: str, key: str, prompt: str = "x", **fields) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "fake", "prompt": prompt, **fields}
    return httpx.post(url + "/v1/completions", json=body, headers=headers)


def replicas(serve, cfg: ServeConfig, count: int = 2) -> tuple[ExitStack, list]:
    stack = ExitStack()
    return stack, [stack.enter_context(serve(cfg, {"fake": FakeClient()})) for _ in range(count)]


def test_two_replicas_sharing_redis_enforce_one_requests_per_minute_limit(serve, redis_server):
    key, _ = KeyStore().create("shared", rpm=5)
    stack, (a, b) = replicas(serve, redis_config(redis_server.url))
    with stack:
        codes = [ask(s.url, key).status_code for s in (a, b) * 4]
        refused = ask(b.url, key)
    assert codes == [200] * 5 + [429] * 3  # 5 in all, not 5 on each replica
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_in_memory_limits_are_per_replica(serve):
    # the reason for the Redis backend: two in-memory replicas each allow the full quota
    key, _ = KeyStore().create("local", rpm=5)
    stack, (a, b) = replicas(serve, config())
    with stack:
        codes = [ask(s.url, key).status_code for s in (a, b) * 4]
    assert codes == [200] * 8


def test_concurrent_requests_on_two_replicas_never_exceed_the_limit(serve, redis_server):
    key, _ = KeyStore().create("burst", rpm=7)
    stack, servers = replicas(serve, redis_config(redis_server.url))
    with stack:

        async def burst():
            async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
                body = {"model": "fake", "prompt": "x"}
                calls = [c.post(servers[i % 2].url + "/v1/completions", json=body) for i in range(24)]
                return await asyncio.gather(*calls)

        codes = [r.status_code for r in asyncio.run(burst())]
    assert codes.count(200) == 7 and codes.count(429) == 17  # the check-and-count is atomic


def test_tokens_counted_on_one_replica_limit_the_other(serve, redis_server):
    key, _ = KeyStore().create("tokens", tpm=15)
    other, _ = KeyStore().create("other", tpm=15)
    stack, (a, b) = replicas(serve, redis_config(redis_server.url))
    with stack:
        assert ask(a.url, key, "one two three four five six", max_tokens=6).status_code == 200  # 6 + 6
        refused = ask(b.url, key, max_tokens=6)  # 12 used + 1 + 6 reserved > 15
        assert ask(b.url, other, max_tokens=6).status_code == 200  # quotas are per key
    assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]


def test_redis_window_slides_and_its_keys_expire(redis_server, monkeypatch):
    import tuneloop.serve.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "WINDOW_S", 2)

    async def main():
        limiter = RedisRateLimiter(redis_server.url, prefix="t")
        try:
            await limiter.admit("k", 2, None, 0, int)
            await limiter.admit("k", 2, None, 0, int)
            with pytest.raises(ratelimit.APIError) as refused:
                await limiter.admit("k", 2, None, 0, int)
            ttl = await limiter.redis.ttl("t:{k}:requests")
            await asyncio.sleep(2.1)
            await limiter.admit("k", 2, None, 0, int)  # the first two left the window
            return refused.value, ttl
        finally:
            await limiter.close()

    refused, ttl = asyncio.run(main())
    assert refused.status == 429 and 1 <= int(refused.headers["Retry-After"]) <= 2
    assert 0 < ttl <= 3  # every counter expires: memory in Redis stays bounded


def test_redis_down_is_a_clear_503_and_not_ready_until_it_is_back(serve, tmp_path):
    redis = RedisServer(tmp_path)
    key, _ = KeyStore().create("q", rpm=100)
    free, _ = KeyStore().create("unlimited")
    url = f"redis://:hunter2@127.0.0.1:{redis.port}/0"  # nothing listens yet
    with serve(redis_config(url), {"fake": FakeClient()}) as s:
        down = ask(s.url, key)
        ready = httpx.get(s.url + "/ready")
        assert ask(s.url, free).status_code == 200  # keys without quotas never need Redis
        redis.start()
        try:
            up = ask(s.url, key)
            ready_again = httpx.get(s.url + "/ready")
            redis.stop()
            down_again = ask(s.url, key)
        finally:
            redis.stop()
        metrics = httpx.get(s.url + "/metrics").text
    error = down.json()["error"]
    assert down.status_code == 503 and error["code"] == "rate_limit_store_unavailable"
    assert f"Redis at redis://127.0.0.1:{redis.port}/0" in error["message"]
    assert "limits.redis_unavailable=reject" in error["message"] and "hunter2" not in error["message"]
    assert ready.status_code == 503 and "is unavailable: ConnectionError" in ready.json()["rate_limits"]
    assert up.status_code == 200 and ready_again.status_code == 200
    assert down_again.status_code == 503
    assert 'tuneloop_rate_limit_store_errors_total{action="rejected"} 2.0' in metrics


def test_redis_down_lets_requests_through_when_configured_and_counts_them(serve, tmp_path):
    redis = RedisServer(tmp_path)  # never started
    key, _ = KeyStore().create("q", rpm=1)
    cfg = redis_config(redis.url, redis_unavailable="allow", redis_timeout_s=0.2)
    with serve(cfg, {"fake": FakeClient()}) as s:
        start = time.monotonic()
        codes = [ask(s.url, key).status_code for _ in range(3)]
        elapsed = time.monotonic() - start
        ready = httpx.get(s.url + "/ready")
        metrics = httpx.get(s.url + "/metrics").text
    assert codes == [200, 200, 200] and elapsed < 5
    assert ready.status_code == 200 and "is unavailable: ConnectionError" in ready.json()["rate_limits"]
    assert 'tuneloop_rate_limit_store_errors_total{action="allowed"} 3.0' in metrics


def test_redis_backend_config_errors_name_the_key():
    from tuneloop.config import load_config
    from tuneloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"limits\.redis_url is not set"):
        load_config(ServeConfig, None, ["limits.backend=redis"])
    with pytest.raises(ConfigError, match=r"limits\.redis_url must start with redis://"):
        load_config(ServeConfig, None, ["limits.backend=redis", "limits.redis_url=http://h:6379"])
    with pytest.raises(ConfigError, match=r"limits\.backend"):
        load_config(ServeConfig, None, ["limits.backend=memcached"])
