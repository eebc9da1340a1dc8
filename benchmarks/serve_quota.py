"""What a token quota costs the gateway per request: requests/s with and without tpm, in one run.

Three gateways (each its own process, fake engine, one uvicorn worker) are loaded in turn by the
same closed-loop httpx client, round after round so that a machine busy with other work slows all
three alike: an API key without quotas (the baseline), a key with a tpm quota in memory, and the
same in a local redis-server (admission reserves with one Lua call, the end settles with another).
Each mode's median requests/s over the rounds is reported, and its ratio to the baseline.

    python benchmarks/serve_quota.py --requests 500 --concurrency 8 --rounds 5 [--stream]

`--micro` times the quota path alone, in this process: one admission and one settlement (what a
request with a tpm quota adds), in memory and through the local redis-server, sequentially and 8 at
a time, as microseconds per request (median of the rounds), next to the harness alone ("none") and
two Redis PINGs (the round trips any Redis-backed check and count costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from serve_gateway import _free_port, _wait_ready, load, redis_server

GATEWAY = str(Path(__file__).with_name("serve_gateway.py"))


def start(stack: ExitStack, *args: str) -> str:
    """A fake-engine gateway (serve_gateway.py's server mode) with auth on; its URL once ready."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, GATEWAY, "--auth", *args, "--server", str(port)])
    stack.callback(lambda: (server.terminate(), server.wait()))
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, server)
    return url


class NoQuota:
    """The harness alone (the baseline of --micro): admit and settle that do nothing."""

    async def admit(self, *args):
        return None

    async def settle(self, *args) -> None:
        pass

    async def close(self) -> None:
        pass


class TwoPings(NoQuota):
    """Two Redis round trips that do nothing (PING): what any Redis quota check + count costs at least."""

    def __init__(self, url: str):
        import redis.asyncio as aredis

        self.redis = aredis.Redis.from_url(url)

    async def admit(self, *args):
        await self.redis.ping()

    async def settle(self, *args) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


async def micro(limiter, n: int, concurrency: int) -> float:
    """Microseconds per request of admit + settle (a tpm quota no run reaches), `concurrency` at once."""
    import time

    async def one(i: int) -> None:
        reservation = await limiter.admit(f"key{i % 4}", None, 10**9, 300, lambda: 100)
        await limiter.settle(reservation, 100)

    start = time.perf_counter()
    for first in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(first, min(first + concurrency, n))))
    return (time.perf_counter() - start) / n * 1e6


def micro_main(args: argparse.Namespace) -> None:
    from tuneloop.serve.ratelimit import MemoryRateLimiter, RedisRateLimiter

    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(stack.enter_context(tempfile.TemporaryDirectory())))

        async def run(make, concurrency: int) -> list[float]:
            limiter = make()
            try:
                await micro(limiter, 500, concurrency)  # warm-up (scripts loaded, connections open)
                return [await micro(limiter, args.requests, concurrency) for _ in range(args.rounds)]
            finally:
                await limiter.close()

        makers = {
            "none": NoQuota,
            "memory": MemoryRateLimiter,
            "redis: two PINGs": lambda: TwoPings(redis_url),
            "redis": lambda: RedisRateLimiter(redis_url),
        }
        for name, make in makers.items():
            for concurrency in (1, 8):
                us = asyncio.run(run(make, concurrency))
                print(json.dumps({"quota_path": name, "concurrency": concurrency, "us_per_request": round(statistics.median(us), 1), "rounds": [round(u, 1) for u in us]}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=500, help="requests per mode per round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--micro", action="store_true", help="time admit + settle alone (no HTTP)")
    args = p.parse_args()
    if args.micro:
        return micro_main(args)
    with ExitStack() as stack:
        home = os.environ.get("TUNELOOP_HOME") or stack.enter_context(tempfile.TemporaryDirectory())
        os.environ["TUNELOOP_HOME"] = home
        from tuneloop.serve.keys import KeyStore

        redis_url = stack.enter_context(redis_server(stack.enter_context(tempfile.TemporaryDirectory())))
        # a quota no run reaches: every request reserves and settles, none is refused
        plain, _ = KeyStore().create("bench-plain")
        limited, _ = KeyStore().create("bench-tpm", tpm=10**9)
        modes = {
            "api key, no quota": (start(stack), plain),
            "tpm quota, memory": (start(stack, "--limits", "memory"), limited),
            "tpm quota, redis": (start(stack, "--limits", "redis", "--redis-url", redis_url), limited),
        }
        for url, key in modes.values():  # warm-up
            asyncio.run(load(url, 200, args.concurrency, args.stream, key))
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode, (url, key) in modes.items():
                runs[mode].append(asyncio.run(load(url, args.requests, args.concurrency, args.stream, key)))
    base = statistics.median(r["rps"] for r in runs["api key, no quota"])
    for mode, results in runs.items():
        rps = statistics.median(r["rps"] for r in results)
        summary = {
            "mode": mode,
            "stream": args.stream,
            "concurrency": args.concurrency,
            "rps_median": rps,
            "rps_rounds": [r["rps"] for r in results],
            "p50_ms_median": statistics.median(r["p50_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "ratio_to_no_quota": round(rps / base, 3),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
