"""Token quotas that hold: reserved at admission, held while requests run, settled at the end.

Real gateways (uvicorn), the official `openai` client, and a real redis-server for the shared backend;
the fake engine echoes its prompt's words one token at a time (prompt N words -> up to N tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import openai
import pytest
import redis

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore
from tuneloop.serve.ratelimit import MemoryRateLimiter

from .conftest import _free_port, run_server

PREFIX = "tuneloop:ratelimit"
WORDS_40 = " ".join(["w"] * 40)  # 40 prompt tokens, and up to 40 generated


def make_config(backend: str, redis_url: str | None = None, **limits) -> ServeConfig:
    if backend == "redis":
        limits |= {"backend": "redis", "redis_url": redis_url}
    return ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused"}], "limits": limits})


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> Callable[..., ServeConfig]:
    """A config factory for each backend (a real, emptied redis-server for "redis")."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return lambda **limits: make_config(request.param, url, **limits)


def quota(server, key_id: str) -> tuple[int, int]:
    """(tokens charged in the window, tokens held by open reservations) of a key, as the limiter has them."""
    limiter = server.gateway.limiter
    if isinstance(limiter, MemoryRateLimiter):
        q = limiter._quotas.get(key_id)
        if q is None:  # nothing asked yet
            return 0, 0
        return q.charged, sum(r.tokens for r in q.open.values())
    with redis.Redis.from_url(server.gateway.config.limits.redis_url).pipeline(transaction=True) as p:
        tokens, reserved = (
            p.hvals(f"{PREFIX}:{{{key_id}}}:tokens").hvals(f"{PREFIX}:{{{key_id}}}:reserved").execute()
        )
    return sum(int(v) for v in tokens), sum(int(v.split()[0]) for v in reserved)  # read at one instant


def wait_settled(server, key_id: str, timeout_s: float = 10) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while (q := quota(server, key_id))[1] and time.monotonic() < deadline:
        time.sleep(0.02)
    return q


def openai_client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_streams_closed_early_pay_for_what_they_got_and_cannot_pass_the_quota(serve, backend):
    # the tester's bypass: a 200-tpm key opens streams of up to 90 tokens and closes each early
    key, record = KeyStore().create("bypass", tpm=200)
    with serve(backend(), {"fake": FakeClient(delay_s=0.02)}) as s:
        client = openai_client(s, key)
        opened, refused, charges = 0, None, []
        for _ in range(5):
            before = wait_settled(s, record.id)[0]
            try:
                stream = client.completions.create(model="fake", prompt=WORDS_40, max_tokens=50, stream=True)
            except openai.RateLimitError as e:
                refused = e
                break
            opened += 1
            read = 0
            for chunk in stream:
                read += bool(chunk.choices and chunk.choices[0].text)
                if read == 5:
                    break
            stream.close()
            charges.append((wait_settled(s, record.id)[0] - before, read))
        charged, held = quota(s, record.id)
    assert refused is not None and opened < 5  # the quota ran out before the fifth stream
    assert "tokens per minute" in refused.message and 1 <= int(refused.response.headers["retry-after"]) <= 60
    for paid, read in charges:  # the prompt + what it generated: not 0, not its whole reservation (90)
        assert 40 + read <= paid < 90, charges
    assert charged == sum(p for p, _ in charges) <= 200 and held == 0


def test_concurrent_streams_hold_the_quota_while_they_run(serve, backend):
    key, record = KeyStore().create("burst", tpm=200)
    with serve(backend(), {"fake": FakeClient(delay_s=0.02)}) as s:

        async def one(client: openai.AsyncOpenAI) -> int | str:
            try:
                stream = await client.completions.create(
                    model="fake", prompt=WORDS_40, max_tokens=50, stream=True
                )
            except openai.RateLimitError:
                return "429"
            return sum([len(c.choices[0].text.split()) async for c in stream if c.choices])

        async def burst() -> list[int | str]:
            client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
            return await asyncio.gather(*(one(client) for _ in range(5)))

        results = asyncio.run(burst())
        charged, held = wait_settled(s, record.id)
    # each reserves 40 + 50 = 90: two fit in 200 together, the other three are refused
    assert sorted(map(str, results)) == ["40", "40", "429", "429", "429"]
    assert charged == 2 * (40 + 40) and held == 0


def test_refund_of_the_unused_part_lets_the_next_request_in(serve, backend):
    key, record = KeyStore().create("refund", tpm=200)
    with serve(backend(), {"fake": FakeClient()}) as s:
        client = openai_client(s, key)
        usages = []
        for _ in range(3):  # each reserves 10 + 150 = 160 but uses 10 + 10
            out = client.completions.create(model="fake", prompt=" ".join(["w"] * 10), max_tokens=150)
            usages.append(out.usage.total_tokens)
        with pytest.raises(openai.RateLimitError) as refused:  # 60 charged + 160 > 200
            client.completions.create(model="fake", prompt=" ".join(["w"] * 10), max_tokens=150)
        charged, held = quota(s, record.id)
    assert usages == [20, 20, 20] and charged == 60 and held == 0
    assert "this request needs up to 160" in refused.value.message and "140 are left" in refused.value.message
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60


def test_a_request_larger_than_the_whole_quota_is_a_400_that_says_so(serve):
    key, _ = KeyStore().create("small", rpm=1, tpm=100)
    with serve(make_config("memory"), {"fake": FakeClient()}) as s:
        client = openai_client(s, key)
        with pytest.raises(openai.BadRequestError) as too_many:
            client.completions.create(model="fake", prompt="one two", max_tokens=200)
        with pytest.raises(openai.BadRequestError) as default:  # the server's default max_tokens
            client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as choices:  # n choices: the prompt once, n x max_tokens
            client.completions.create(model="fake", prompt="one two", max_tokens=40, n=3)
        ok = client.completions.create(model="fake", prompt="one two", max_tokens=98)  # 100: fits
    message = too_many.value.message
    assert too_many.value.code == "request_exceeds_quota" and "could never run" in message
    assert "needs up to 202 tokens (a prompt of 2 + max_tokens 200)" in message
    assert "set max_tokens to at most 98" in message and "quota is 100 tokens per minute" in message
    assert "needs up to 122 tokens (a prompt of 2 + max_tokens 40 × n=3)" in choices.value.message
    assert "set max_tokens to at most 32" in choices.value.message
    limits = s.gateway.config.limits
    assert f"max_tokens {limits.max_tokens_default or limits.max_completion_tokens} (none was given" in (
        default.value.message
    )
    assert ok.usage.total_tokens == 4  # the 400s were not counted against rpm=1 either


def test_a_timed_out_request_pays_for_what_it_generated(serve):
    key, record = KeyStore().create("slow", tpm=1000)
    cfg = make_config("memory", request_timeout_s=0.5)
    with serve(cfg, {"fake": FakeClient(delay_s=0.05)}) as s:
        with pytest.raises(openai.APIStatusError) as timed_out:
            openai_client(s, key).completions.create(model="fake", prompt=WORDS_40, max_tokens=40)
        charged, held = wait_settled(s, record.id)
    assert timed_out.value.status_code == 504
    assert 40 + 3 <= charged <= 40 + 12 and held == 0  # ~10 tokens in 0.5 s: not 0, not 80


def test_two_gateways_sharing_redis_hold_one_token_quota(serve, redis_server):
    key, record = KeyStore().create("shared", tpm=200)
    cfg = make_config("redis", redis_server.url)
    with (
        serve(cfg, {"fake": FakeClient(delay_s=0.02)}) as a,
        serve(cfg, {"fake": FakeClient(delay_s=0.02)}) as b,
    ):

        async def one(url: str) -> int | str:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            try:
                out = await client.completions.create(model="fake", prompt=WORDS_40, max_tokens=50)
            except openai.RateLimitError:
                return "429"
            return out.usage.total_tokens

        async def burst() -> list[int | str]:
            return await asyncio.gather(*(one(s.url) for s in (a, b) * 3))

        results = asyncio.run(burst())
        charged, held = wait_settled(a, record.id)
    assert sorted(map(str, results)) == ["429", "429", "429", "429", "80", "80"]  # 2 × 90 reserved of 200
    assert charged == 160 and held == 0


def test_a_long_request_keeps_its_reservation_past_the_lease(serve, redis_server):
    # renewals every third of the lease keep a running request's quota held however long it runs
    key, record = KeyStore().create("long", tpm=200)
    cfg = make_config("redis", redis_server.url, reservation_lease_s=1)
    with serve(cfg, {"fake": FakeClient(delay_s=0.075)}) as s:
        client = openai_client(s, key)
        body = {"model": "fake", "prompt": WORDS_40, "max_tokens": 100, "stream": True}  # holds 140
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=headers, timeout=30) as r:
            lines = r.iter_lines()
            start = time.monotonic()
            while time.monotonic() - start < 2.5:  # 2.5 leases
                next(lines)
            with pytest.raises(openai.RateLimitError):  # 140 held + 10 + 60 > 200
                client.completions.create(model="fake", prompt=" ".join(["w"] * 10), max_tokens=60)
            list(lines)
        wait_settled(s, record.id)
        after = client.completions.create(model="fake", prompt=" ".join(["w"] * 10), max_tokens=60)
    assert after.usage.total_tokens == 20


def _replica(cfg: ServeConfig, port: int) -> subprocess.Popen:
    """A gateway in a process of its own (the fake engine, 0.05 s a token), to be killed."""
    code = (
        "import sys, uvicorn\n"
        "from tuneloop.serve import ServeConfig, create_app\n"
        "from tuneloop.serve.fake import FakeClient\n"
        "cfg = ServeConfig.model_validate_json(sys.argv[1])\n"
        "app = create_app(cfg, {'fake': FakeClient(delay_s=0.05)})\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, cfg.model_dump_json(), str(port)], env=os.environ)


def test_the_reservation_of_a_crashed_replica_expires_charged_what_it_reported(serve, redis_server):
    key, record = KeyStore().create("crash", tpm=200)
    cfg = make_config("redis", redis_server.url, reservation_lease_s=1)
    port = _free_port()
    dying = _replica(cfg, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert dying.poll() is None and time.monotonic() < deadline, "the replica did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with serve(cfg, {"fake": FakeClient()}) as survivor:
            client = openai_client(survivor, key)
            body = {"model": "fake", "prompt": WORDS_40, "max_tokens": 100, "stream": True}  # holds 140
            headers = {"Authorization": f"Bearer {key}"}
            url = f"http://127.0.0.1:{port}/v1/completions"
            with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
                got, lines = [], r.iter_lines()  # held: a generator dropped early closes the response
                for line in lines:
                    got += [line] if line.startswith("data:") else []
                    if len(got) == 20:
                        break
                os.kill(dying.pid, signal.SIGKILL)  # mid-request, after a renewal or more (every 0.33 s)
                killed = time.monotonic()
            dying.wait(timeout=10)
            with pytest.raises(openai.RateLimitError):  # its 140 are still held: 140 + 70 > 200
                client.completions.create(model="fake", prompt=" ".join(["w"] * 10), max_tokens=60)
            while True:
                try:
                    after = client.completions.create(
                        model="fake", prompt=" ".join(["w"] * 10), max_tokens=60
                    )
                    break
                except openai.RateLimitError:
                    assert time.monotonic() - killed < 5, "the dead replica's reservation never expired"
                    time.sleep(0.1)
            freed_after = time.monotonic() - killed
            charged, held = quota(survivor, record.id)
    finally:
        dying.kill()
        dying.wait(timeout=10)
    assert all(json.loads(line[5:])["choices"][0]["text"] for line in got)  # 20 tokens streamed
    assert freed_after <= 1 + 1.5  # within one lease (+ polling)
    # the dead request was charged the usage its last renewal reported: its prompt + some tokens
    assert after.usage.total_tokens == 20 and 40 + 5 <= charged - 20 <= 40 + 30 and held == 0


def test_redis_down_with_allow_lets_token_quota_keys_through_counted(serve, tmp_path):
    from .conftest import RedisServer

    key, _ = KeyStore().create("q", tpm=100)
    cfg = make_config("redis", RedisServer(tmp_path).url, redis_unavailable="allow", redis_timeout_s=0.2)
    with serve(cfg, {"fake": FakeClient()}) as s:
        out = openai_client(s, key).completions.create(model="fake", prompt="one two", max_tokens=5)
        metrics = httpx.get(s.url + "/metrics").text
    assert out.usage.total_tokens == 4
    assert 'tuneloop_rate_limit_store_errors_total{action="allowed"} 1.0' in metrics
    assert 'tuneloop_rate_limit_store_errors_total{action="tokens_lost"} 1.0' in metrics  # and said so


def test_a_local_model_reserves_its_exact_prompt_and_answers_the_same(tiny_llama, tmp_path):
    # the prompt is tokenized at admission (chat template included) and the engine gets those ids
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama), "kv_cache_gib": 0.02}],
            "log": {"enabled": False},
        }
    )
    limited, record = KeyStore().create("limited", tpm=10_000)
    free, _ = KeyStore().create("free")
    messages = [{"role": "user", "content": "Hello, how can I help you today?"}]
    with run_server(cfg) as s:
        ask = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
        a = openai_client(s, limited).chat.completions.create(**ask)
        b = openai_client(s, free).chat.completions.create(**ask)
        charged, held = quota(s, record.id)
        reserved = []
        limiter = s.gateway.limiter
        original = limiter.admit

        async def spy(key_id, rpm, tpm, tokens, usage):
            reserved.append(tokens)
            return await original(key_id, rpm, tpm, tokens, usage)

        limiter.admit = spy
        openai_client(s, limited).chat.completions.create(**ask)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage and charged == a.usage.total_tokens and held == 0
    assert reserved == [a.usage.prompt_tokens + 12]


def test_an_upstream_reserves_an_estimated_prompt_and_is_charged_its_reported_usage(serve):
    # an upstream's tokenizer is not ours: the prompt is reserved by its UTF-8 length (a bound), and
    # the usage the upstream reports is what the key pays
    back_cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    key, record = KeyStore().create("remote", tpm=100)
    with serve(back_cfg, {"fake": FakeClient()}) as back:
        front_cfg = ServeConfig.model_validate(
            {"models": [{"name": "remote", "upstream": back.url + "/v1", "upstream_model": "fake"}]}
        )
        with serve(front_cfg) as front:
            client = openai_client(front, key)
            out = client.completions.create(model="remote", prompt="one two three", max_tokens=80)  # 13 + 80
            charged, held = quota(front, record.id)
            with pytest.raises(openai.BadRequestError) as too_large:  # 27 bytes + 80 > 100
                client.completions.create(model="remote", prompt="one two three one two three", max_tokens=80)
    assert out.usage.total_tokens == 6 and charged == 6 and held == 0
    assert "a prompt estimated at 27 + max_tokens 80" in too_large.value.message
