"""Is the load generator, not the server, the limit? The same gateway, two clients, back to back.

The gateway (auth off) over the fake engine (`delay_s` a token, no model) serves 128 streaming chat
requests at a time; the load is `tuneloop bench serve`'s closed loop, run in a child process (its
own GIL), once with its aiohttp client and once with an httpx client written as it was before
(`httpx.AsyncClient.stream` + `aiter_lines`). The server's own TTFT histogram (/metrics, counted
from each request's arrival) is the reference: a client that sees much more is measuring itself.

    PYTHONPATH=src python benchmarks/serve_loadgen.py OUT [--concurrency 128] [--delay-ms 24] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from server_metrics import bucket_quantiles, ttft_buckets

HTTPX_CLIENT = r"""
import asyncio, json, sys, time
import httpx
from tuneloop.bench.serve import Sample, prompt_text, summarize

async def one(c, body):
    start, ttft, tokens, last, gaps = time.perf_counter(), None, 0, None, []
    async with c.stream("POST", "/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if any((ch.get("delta") or {}).get("content") for ch in chunk.get("choices") or []):
                now = time.perf_counter()
                ttft = now - start if last is None else ttft
                if last is not None:
                    gaps.append(now - last)
                last = now
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    return Sample(r.status_code, time.perf_counter() - start, ttft, tokens, gaps)

async def main(a):
    todo, samples = iter(range(a["requests"])), []
    body = {"model": a["model"], "max_tokens": a["max_tokens"], "stream": True, "stream_options": {"include_usage": True}}
    async def client(c):
        for i in todo:
            msg = [{"role": "user", "content": prompt_text(a["prompt_len"], i, a["tag"])}]
            samples.append(await one(c, {**body, "messages": msg}))
    limits = httpx.Limits(max_connections=a["concurrency"])
    async with httpx.AsyncClient(base_url=a["url"], limits=limits, timeout=600) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(a["concurrency"])))
        return samples, time.perf_counter() - start

a = json.loads(sys.argv[1])
samples, wall = asyncio.run(main(a))
print(json.dumps(summarize(samples, wall)))
"""

AIOHTTP_CLIENT = r"""
import json, sys
from tuneloop.bench.serve import run
a = json.loads(sys.argv[1])
print(json.dumps(run(a["url"], a["model"], a["requests"], a["concurrency"], a["prompt_len"], a["max_tokens"],
                     stream=True, tag=a["tag"])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", type=Path)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--delay-ms", type=float, default=24.0)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    os.environ["TUNELOOP_HOME"] = tempfile.mkdtemp(prefix="tuneloop-home-")
    import uvicorn

    from tuneloop.serve import ServeConfig, create_app
    from tuneloop.serve.fake import FakeClient

    c = args.concurrency
    model = {"name": "fake", "model": "unused", "max_concurrency": 2 * c, "max_queue": 2 * c}
    cfg = ServeConfig.model_validate({"models": [model], "auth": {"enabled": False}})
    app = create_app(cfg, {"fake": FakeClient(delay_s=args.delay_ms / 1000)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    res: dict = {"concurrency": c, "requests": 2 * c, "delay_ms": args.delay_ms, "tokens": args.tokens,
                 "ideal_tokens_per_s": round(c / (args.delay_ms / 1000), 1), "runs": []}  # fmt: skip
    for i, (name, code) in enumerate([("aiohttp", AIOHTTP_CLIENT), ("httpx", HTTPX_CLIENT)] * 2):
        load = {"url": base + "/v1", "model": "fake", "requests": 2 * c, "concurrency": c,
                "prompt_len": 128, "max_tokens": args.tokens, "tag": f"t{i}"}  # fmt: skip
        before = ttft_buckets(base)
        done = subprocess.run([sys.executable, "-c", code, json.dumps(load)], capture_output=True, text=True,
                              env=env, timeout=600)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{name} client failed:\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        run = {"client": name, "output_tokens_per_s": report["output_tokens_per_s"], "ttft_s": report["ttft_s"],
               "server_ttft_bucket_s": bucket_quantiles(before, ttft_buckets(base))}  # fmt: skip
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
    server.should_exit = True
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_loadgen.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
