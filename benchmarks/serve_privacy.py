"""What privacy by default costs the gateway: PII redaction and user pseudonyms in the request log.

Two measurements, each as a ratio against the same thing with privacy off, measured in the same run:

1. per log record: `RequestLog.line` (what the writer thread does per request) for a short English
   chat, a chat carrying PII (Chinese ID, card, email, phone), and a 4,000-character support chat
   full of numbers (order ids, prices, dates), redaction + pseudonym on against off;
2. through the whole server: requests/s and latency of the gateway (fake engine, one uvicorn worker
   in its own process, httpx load in this one, closed loop) with the PII chat as every prompt,
   `log.redact_pii` + `log.pseudonymize_users` on against off, alternated (off, on, off, on, ...) so
   that load from other users of the machine falls on both.

    python benchmarks/serve_privacy.py [--records 2000] [--requests 1000] [--concurrency 8] [--rounds 3]
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
import time
from pathlib import Path

import httpx

PII = "我的身份证号是11010519491231002X，银行卡 6222 0212 3456 7894，邮箱 li.wei@example.com，手机 13812345678。"
NUMBERS = (
    "Order 48213-77 shipped on 2025-03-14 for $129.99 (tax 8.25%); tracking 1Z999AA10123456784. "
    "Version 3.11.4 fixed it, see build 20250314.1 and ticket #88213. "
) * 24  # ~4,000 characters


def record(text: str, answer: str) -> dict:
    body = {"model": "fake", "messages": [{"role": "user", "content": text}], "user": "customer-4711"}
    response = {"id": "chatcmpl-x", "object": "chat.completion", "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}]}  # fmt: skip
    return {"request_id": "r", "response_id": "chatcmpl-x", "key_id": "abc", "user": "customer-4711",
            "metadata": None, "model": "fake", "variant": "default", "status": 200, "request": body,
            "response": response, "error": None}  # fmt: skip


def per_record(n: int) -> list[dict]:
    from tuneloop.interactions.privacy import Privacy
    from tuneloop.interactions.requestlog import RequestLog

    cases = {
        "short English": record("How do I reset my router?", "Hold the reset button for ten seconds."),
        "PII chat": record(PII, "I have noted your details."),
        "4k numbers": record(NUMBERS, NUMBERS[:1000]),
    }
    out = []
    with tempfile.TemporaryDirectory() as folder:
        off = RequestLog(Path(folder) / "off.jsonl")
        on = RequestLog(Path(folder) / "on.jsonl", privacy=Privacy(True, b"k" * 32))
        try:
            for name, rec in cases.items():
                times = {}
                for label, log in (("off", off), ("on", on)):
                    log.line(0.0, rec)  # warm caches
                    start = time.perf_counter()
                    for _ in range(n):
                        log.line(0.0, rec)
                    times[label] = (time.perf_counter() - start) / n * 1e6
                out.append({"record": name, "chars": len(json.dumps(rec, ensure_ascii=False)),
                            "off_us": round(times["off"], 1), "on_us": round(times["on"], 1),
                            "ratio": round(times["on"] / times["off"], 1)})  # fmt: skip
        finally:
            off.close()
            on.close()
    return out


def serve(port: int, private: bool) -> None:
    import uvicorn

    from tuneloop.serve import ServeConfig, create_app
    from tuneloop.serve.fake import FakeClient

    log = {"redact_pii": private, "pseudonymize_users": private}
    cfg = ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused", "max_concurrency": 1024}],
                                      "auth": {"enabled": False}, "log": log})  # fmt: skip
    uvicorn.run(create_app(cfg, {"fake": FakeClient()}), host="127.0.0.1", port=port, log_level="warning")


async def load(url: str, n: int, concurrency: int) -> dict:
    body = {"model": "fake", "messages": [{"role": "user", "content": PII}], "user": "customer-4711"}
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker(c: httpx.AsyncClient) -> None:
        for _ in queue:
            start = time.perf_counter()
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=concurrency)) as c:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"rps": n / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def through_server(n: int, concurrency: int, rounds: int) -> dict:
    from serve_gateway import _free_port, _wait_ready  # a sibling script (its folder is on sys.path)

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(rounds):
        for label in ("off", "on"):
            with tempfile.TemporaryDirectory() as home:
                port = _free_port()
                env = {**os.environ, "TUNELOOP_HOME": home}
                cmd = [sys.executable, __file__, "--server", str(port), "--private", label]
                server = subprocess.Popen(cmd, env=env)
                try:
                    url = f"http://127.0.0.1:{port}"
                    _wait_ready(url, server)
                    asyncio.run(load(url, 200, concurrency))  # warm-up
                    runs[label].append(asyncio.run(load(url, n, concurrency)))
                finally:
                    server.terminate()
                    server.wait()
    median = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
    return {
        "requests": n, "concurrency": concurrency, "rounds": rounds,
        **{f"{label}_{k}": round(v, 1) for label, m in median.items() for k, v in m.items()},
        "rps_ratio_on_over_off": round(median["on"]["rps"] / median["off"]["rps"], 3),
        "p50_ratio_on_over_off": round(median["on"]["p50_ms"] / median["off"]["p50_ms"], 3),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server", type=int, help=argparse.SUPPRESS)
    p.add_argument("--private", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.server:
        return serve(args.server, args.private == "on")
    for row in per_record(args.records):
        print(json.dumps(row, ensure_ascii=False))
    print(json.dumps(through_server(args.requests, args.concurrency, args.rounds)))


if __name__ == "__main__":
    main()
