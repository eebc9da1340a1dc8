"""The gateway measured: its own overhead (fake engine), and a real model served at 1, 8 and 32 clients.

The server runs in its own process (uvicorn, one worker), the load generator (httpx, asyncio, closed
loop) in this one, on the same machine.

    # overhead: requests/s and latency through the whole HTTP stack, with an engine that answers at once
    python benchmarks/serve_gateway.py --requests 1000 --concurrency 1 8 32 [--stream] [--auth]
    # the same with per-key quotas checked on every request, in memory or in a local redis-server
    python benchmarks/serve_gateway.py --requests 1000 --concurrency 8 --limits memory|redis
    # a real model (the default one, local engine): QPS, latency percentiles, TTFT, TPOT per client count
    python benchmarks/serve_gateway.py --model smollm2-135m-instruct --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

import httpx


def serve(port: int, args: argparse.Namespace) -> None:
    import uvicorn

    from tuneloop.serve import ServeConfig, create_app
    from tuneloop.serve.fake import FakeClient

    limits = {}
    if args.limits == "redis":
        limits = {"backend": "redis", "redis_url": args.redis_url}
    if args.model:
        model = {"name": "bench", "model": args.model, "kv_cache_gib": args.kv_cache_gib}
        cfg = ServeConfig.model_validate(
            {"models": [model], "auth": {"enabled": False}, "log": {"enabled": False}}
        )
        app = create_app(cfg)
    else:
        cfg = ServeConfig.model_validate(
            {
                "models": [{"name": "fake", "model": "unused", "max_concurrency": 1024}],
                "auth": {"enabled": bool(args.auth or args.limits)},
                "limits": limits,
            }
        )
        app = create_app(cfg, {"fake": FakeClient()})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def load(url: str, n: int, concurrency: int, stream: bool, key: str) -> dict:
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "one two three four"}],
        "stream": stream,
    }
    latencies: list[float] = []
    errors = 0
    queue = iter(range(n))

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in queue:
            start = time.perf_counter()
            r = await c.post("/v1/chat/completions", json=body)
            errors += r.status_code != 200
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=60) as c:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency,
        "requests": n,
        "rps": round(n / wall, 1),
        "errors": errors,
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(folder: str):
    """A throwaway redis-server on 127.0.0.1 (no persistence) for `--limits redis`."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("--limits redis needs redis-server (apt-get install -y redis-server)")
    port = _free_port()
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000, help="fake engine: requests per client count")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--stream", action="store_true")
    p.add_argument("--auth", action="store_true", help="with an API key (one SQLite lookup per request)")
    p.add_argument("--limits", choices=["memory", "redis"], help="an API key with rpm/tpm quotas")
    p.add_argument("--model", help="serve this model reference instead of the fake engine")
    p.add_argument("--kv-cache-gib", type=float, default=0.5)
    p.add_argument("--prompt-len", type=int, default=32, help="--model: prompt words")
    p.add_argument("--max-tokens", type=int, default=32, help="--model: tokens per answer")
    p.add_argument("--server", type=int, help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.server:
        return serve(args.server, args)
    with ExitStack() as stack:
        home = os.environ.get("TUNELOOP_HOME") or stack.enter_context(tempfile.TemporaryDirectory())
        os.environ["TUNELOOP_HOME"] = home
        argv = [a for a in sys.argv[1:] if a != "--server"]
        if args.limits == "redis":
            argv += [
                "--redis-url",
                stack.enter_context(redis_server(stack.enter_context(tempfile.TemporaryDirectory()))),
            ]
        key = ""
        if (args.auth or args.limits) and not args.model:
            from tuneloop.serve.keys import KeyStore

            quota = {"rpm": 10**9, "tpm": 10**9} if args.limits else {}
            key, _ = KeyStore().create("bench", **quota)
        port = _free_port()
        server = subprocess.Popen([sys.executable, __file__, *argv, "--server", str(port)])
        stack.callback(lambda: (server.terminate(), server.wait()))
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server)
        if args.model:
            return _model_runs(url, args)
        asyncio.run(load(url, 200, 8, args.stream, key))  # warm-up
        for c in args.concurrency:
            result = asyncio.run(load(url, args.requests, c, args.stream, key))
            print(json.dumps({**result, "stream": args.stream, "auth": bool(key), "limits": args.limits}))


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    while True:
        if server.poll() is not None:
            sys.exit("the server exited before it was ready")
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def _model_runs(url: str, args: argparse.Namespace) -> None:
    from tuneloop.bench.serve import run

    run(url + "/v1", "bench", 2, 1, args.prompt_len, 4, True)  # warm-up
    for c in args.concurrency:
        n = max(8, 3 * c)
        report = run(url + "/v1", "bench", n, c, args.prompt_len, args.max_tokens, True)
        print(json.dumps({**report, "model": args.model, "concurrency": c, "requests": n}))


if __name__ == "__main__":
    main()
