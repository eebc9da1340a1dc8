"""Gateway overhead: requests/s and latency through the whole HTTP stack with a fake engine that answers at once.

The server runs in its own process (uvicorn, one worker), the load generator (httpx, asyncio) in this one.
    python benchmarks/serve_gateway.py --requests 2000 --concurrency 1 8 32 [--stream] [--auth]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def serve(port: int, auth: bool) -> None:
    import uvicorn

    from tuneloop.serve import ServeConfig, create_app
    from tuneloop.serve.fake import FakeClient

    cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused", "max_concurrency": 1024}], "auth": {"enabled": auth}}
    )
    uvicorn.run(create_app(cfg, {"fake": FakeClient()}), host="127.0.0.1", port=port, log_level="warning")


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--stream", action="store_true")
    p.add_argument("--auth", action="store_true", help="with an API key (one SQLite lookup per request)")
    p.add_argument("--server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.server:
        return serve(args.server, args.auth)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TUNELOOP_HOME": os.environ.get("TUNELOOP_HOME") or tempfile.mkdtemp()}
    key = ""
    if args.auth:
        from tuneloop.serve.keys import KeyStore

        os.environ["TUNELOOP_HOME"] = env["TUNELOOP_HOME"]
        key, _ = KeyStore().create("bench")
    cmd = [sys.executable, __file__, "--server", str(port)] + (["--auth"] if args.auth else [])
    server = subprocess.Popen(cmd, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        asyncio.run(load(url, 200, 8, args.stream, key))  # warm-up
        for c in args.concurrency:
            result = asyncio.run(load(url, args.requests, c, args.stream, key))
            print(json.dumps({**result, "stream": args.stream, "auth": args.auth}))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
