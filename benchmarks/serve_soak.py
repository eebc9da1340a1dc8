"""Soak: `tuneloop serve` under mixed load for a long time; is memory flat, are files closed, is latency steady?

A real server process (`tuneloop serve --config`, auth on, the default model from the store,
served through a registry alias) is driven by a mix that exercises every path a tester tried
(issue 17), all at once:

  stream      streamed chat to the end                        stream_abort  streamed chat, closed after 3 chunks
  json        non-streamed chat                               json_leave    non-streamed chat, client gone after 0.3 s
  completion  /v1/completions with token ids (echo, logprobs) bad           one of ~15 bad requests (types, bounds,
  feedback    a rating (sometimes a correction) of one of       seed 2**64, unknown model, no key, bad JSON, ...)
              this client's answers, or of an unknown id      reload        every --reload-every-s: the alias moves
                                                                            (admin API) and the gateway reloads

Every --sample-s it records the server's RSS (its process tree), open file descriptors and threads,
and the window's latency percentiles and status counts. The verdict: RSS growth from the end of the
warm-up (--warmup-min) to the end, which should stay within 5 %, no 5xx other than those a test
provokes on purpose (none here), and the file descriptors back where they started.

    PYTHONPATH=src python3 benchmarks/serve_soak.py --minutes 30 --out benchmarks/serve_soak.json
    PYTHONPATH=src python3 benchmarks/serve_soak.py --minutes 2 --warmup-min 0.5     (a smoke run)

Prints one line per sample; writes the timeline and the verdict as JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

import aiohttp
import psutil
import yaml

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?", "Explain what a router does in one sentence.",
    "Write a haiku about the sea.", "List three prime numbers.", "How do I reset my password?",
    "Translate 'good morning' into Chinese.", "你好，请介绍一下你自己。", "What is 17 times 23?",
]  # fmt: skip
MIX = {
    "stream": 30,
    "stream_abort": 12,
    "json": 18,
    "json_leave": 6,
    "completion": 8,
    "bad": 14,
    "feedback": 12,
}


def bad_requests(model: str, key: str) -> list[tuple[str, dict | bytes, dict]]:
    """(path, body, headers) of requests a server must refuse with a 4xx, never a 5xx."""
    auth = {"Authorization": f"Bearer {key}"}
    msgs = [{"role": "user", "content": "hi"}]
    chat = "/v1/chat/completions"
    return [
        (chat, {"model": model, "messages": msgs, "seed": 2**64, "temperature": 1}, auth),
        (chat, {"model": model, "messages": msgs, "stream": "yes"}, auth),
        (chat, {"model": model, "messages": msgs, "temperature": "hot"}, auth),
        (chat, {"model": model, "messages": msgs, "max_tokens": -5}, auth),
        (chat, {"model": model, "messages": msgs, "max_tokens": 10**9}, auth),
        (chat, {"model": model, "messages": msgs, "user": "u" * 300}, auth),
        (chat, {"model": model, "messages": []}, auth),
        (chat, {"model": "no-such-model", "messages": msgs}, auth),
        (chat, {"model": model, "messages": msgs}, {}),
        (chat, {"model": model, "messages": msgs}, {"Authorization": "Bearer sk-wrong"}),
        (chat, b"{not json", auth),
        (chat, {"model": model, "messages": [{"role": "user", "content": "x " * 40000}]}, auth),
        ("/v1/completions", {"model": model, "prompt": [[False]]}, auth),
        ("/v1/completions", {"model": model, "prompt": [10**9]}, auth),
        ("/v1/feedback", {"response_id": "chatcmpl-nope", "rating": "up"}, auth),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(home: Path) -> tuple[dict, str, str]:
    """The store's default model registered twice (two versions to move the alias between), two keys."""
    os.environ["TUNELOOP_HOME"] = str(home)
    from tuneloop.models.resolve import resolve_model
    from tuneloop.registry import Registry
    from tuneloop.serve.keys import KeyStore

    folder = resolve_model(MODEL, pull=True).path
    reg = Registry()
    if "soak-bot" not in reg.names():
        for _ in range(2):
            reg.register_folder(folder, "soak-bot")
        reg.promote("soak-bot", 1, "production")
    store = KeyStore(None)
    app_key, _ = store.create("soak-app", ["inference", "feedback"])
    admin_key, _ = store.create("soak-admin", ["admin", "inference", "feedback"])
    config = {
        "models": [{"name": "bot", "model": "soak-bot@production", "kv_cache_gib": 0.5}],
        "limits": {"max_completion_tokens": 512},
    }
    return config, app_key, admin_key


class Load:
    def __init__(self, url: str, key: str, admin: str, max_tokens: int):
        self.url, self.key, self.admin, self.max_tokens = url, key, admin, max_tokens
        self.auth = {"Authorization": f"Bearer {key}"}
        self.window: Counter = Counter()  # (action, status) since the last sample
        self.latencies: list[float] = []  # successful stream/json requests since the last sample
        self.total: Counter = Counter()
        self.answered: deque[str] = deque(maxlen=200)  # this key's response ids, for feedback
        self.bad = bad_requests("bot", key)
        self.unexpected: list[str] = []

    def count(self, action: str, status: int, note: str = "") -> None:
        self.window[(action, status)] += 1
        self.total[(action, status)] += 1
        if status >= 500 and len(self.unexpected) < 50:
            self.unexpected.append(f"{action} {status} {note[:200]}")

    def body(self, stream: bool, max_tokens: int | None = None) -> dict:
        return {"model": "bot", "messages": [{"role": "user", "content": random.choice(QUESTIONS)}],
                "max_tokens": max_tokens or random.randint(8, self.max_tokens), "stream": stream,
                "temperature": random.choice([0, 0.7, 1.0]), "user": f"user-{random.randint(0, 50)}"}  # fmt: skip

    async def stream(self, s: aiohttp.ClientSession, abort: bool) -> None:
        t = time.monotonic()
        async with s.post(f"{self.url}/v1/chat/completions", json=self.body(True), headers=self.auth) as r:
            if r.status != 200:
                return self.count("stream_abort" if abort else "stream", r.status, await r.text())
            chunks, rid = 0, ""
            async for raw in r.content:
                if raw.startswith(b"data:") and raw[5:].strip() != b"[DONE]":
                    chunks += 1
                    data = json.loads(raw[5:])
                    if "error" in data:
                        return self.count("stream", 500, json.dumps(data))
                    rid = data.get("id") or rid
                    if abort and chunks >= 3:
                        break  # leaving the context closes the connection mid-stream
        if not abort:  # only a whole answer is recorded as given (a 499 cannot be rated)
            self.answered.append(rid)
            self.latencies.append(time.monotonic() - t)
        self.count("stream_abort" if abort else "stream", 200)

    async def json(self, s: aiohttp.ClientSession, leave: bool) -> None:
        t = time.monotonic()
        body = self.body(False, 400 if leave else None)
        try:
            timeout = aiohttp.ClientTimeout(total=0.3) if leave else None
            async with s.post(f"{self.url}/v1/chat/completions", json=body, headers=self.auth,
                              timeout=timeout) as r:  # fmt: skip
                data = await r.json(content_type=None)
                if r.status == 200:
                    self.answered.append(data["id"])
                    self.latencies.append(time.monotonic() - t)
                self.count("json_leave" if leave else "json", r.status, json.dumps(data))
        except TimeoutError:
            self.count("json_leave", 499)

    async def completion(self, s: aiohttp.ClientSession) -> None:
        body = {"model": "bot", "prompt": [[1, 2, 3, 4, 5, 6]], "max_tokens": 8, "echo": True, "logprobs": 2}
        async with s.post(f"{self.url}/v1/completions", json=body, headers=self.auth) as r:
            self.count("completion", r.status, await r.text())

    async def bad_one(self, s: aiohttp.ClientSession) -> None:
        path, body, headers = random.choice(self.bad)
        kw = {"data": body, "headers": {**headers, "Content-Type": "application/json"}} if isinstance(
            body, bytes) else {"json": body, "headers": headers}  # fmt: skip
        async with s.post(f"{self.url}{path}", **kw) as r:
            self.count("bad", r.status, f"{path} {await r.text()}")
            if r.status < 400:
                self.unexpected.append(f"bad request accepted: {path} {str(body)[:120]} -> {r.status}")

    async def feedback(self, s: aiohttp.ClientSession) -> None:
        rid = self.answered[random.randrange(len(self.answered))] if self.answered else "chatcmpl-none"
        body: dict = {"response_id": rid, "rating": random.choice(["up", "down"])}
        if random.random() < 0.3:
            body["correction"] = "The answer is 42. Contact me at someone@example.com."
        async with s.post(f"{self.url}/v1/feedback", json=body, headers=self.auth) as r:
            self.count("feedback", r.status, await r.text())

    async def client(self, deadline: float) -> None:
        actions, weights = zip(*MIX.items(), strict=True)
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                action = random.choices(actions, weights)[0]
                try:
                    if action in ("stream", "stream_abort"):
                        await self.stream(s, action == "stream_abort")
                    elif action in ("json", "json_leave"):
                        await self.json(s, action == "json_leave")
                    elif action == "completion":
                        await self.completion(s)
                    elif action == "bad":
                        await self.bad_one(s)
                    else:
                        await self.feedback(s)
                except aiohttp.ClientError as e:  # a reset connection is a failure of the server
                    self.count(action, 599, f"{type(e).__name__}: {e}")

    async def reloads(self, deadline: float, every_s: float) -> None:
        admin = {"Authorization": f"Bearer {self.admin}"}
        version = 1
        async with aiohttp.ClientSession() as s:
            while time.monotonic() + every_s < deadline:
                await asyncio.sleep(every_s)
                version = 3 - version
                body = {"alias": "production", "version": version, "confirm": True, "reload": True}
                async with s.post(
                    f"{self.url}/admin/registry/models/soak-bot/promote", json=body, headers=admin
                ) as r:
                    self.count("reload", r.status, await r.text())


def tree(pid: int) -> tuple[float, int, int]:
    """RSS (MiB), open files and threads of the server and its children."""
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    rss = sum(q.memory_info().rss for q in procs) / 2**20
    return rss, sum(q.num_fds() for q in procs), sum(q.num_threads() for q in procs)


async def sample(load: Load, pid: int, start: float, deadline: float, every_s: float, out: list) -> None:
    while time.monotonic() < deadline:
        await asyncio.sleep(every_s)
        rss, fds, threads = tree(pid)
        lat = sorted(load.latencies)
        row = {"t_min": round((time.monotonic() - start) / 60, 2), "rss_mib": round(rss, 1), "fds": fds,
               "threads": threads, "requests": sum(load.window.values()),
               "p50_s": round(statistics.median(lat), 3) if lat else None,
               "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
               "status": {f"{a}:{s}": n for (a, s), n in sorted(load.window.items())}}  # fmt: skip
        out.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "status"}), flush=True)
        load.window.clear()
        load.latencies.clear()


def verdict(timeline: list[dict], warmup_min: float, load: Load | None) -> dict:
    """Memory is compared on floors: a reload holds two engines for a moment (the new one warms up
    before the old one drains), so a sample can land on a peak; the lowest RSS of the first and of
    the last quarter after the warm-up is what stays."""
    after = [r for r in timeline if r["t_min"] >= warmup_min] or timeline
    quarter = max(1, len(after) // 4)
    first, last = min(r["rss_mib"] for r in after[:quarter]), min(r["rss_mib"] for r in after[-quarter:])
    growth = (last - first) / first
    total = load.total if load else Counter()
    return {
        "rss_floor_mib_after_warmup": first, "rss_floor_mib_end": last, "rss_growth_pct": round(100 * growth, 2),
        "rss_mib_max": max(r["rss_mib"] for r in after), "memory_flat_within_5pct": abs(growth) <= 0.05,
        "fds_after_warmup": after[0]["fds"], "fds_end": timeline[-1]["fds"],
        "p50_s_first_quarter": statistics.median([r["p50_s"] for r in after[:quarter] if r["p50_s"]] or [0]),
        "p50_s_last_quarter": statistics.median([r["p50_s"] for r in after[-quarter:] if r["p50_s"]] or [0]),
        "requests": sum(total.values()), "server_errors": {f"{a}:{s}": n for (a, s), n in total.items() if s >= 500},
        "unexpected": load.unexpected if load else [],
        "by_action": {f"{a}:{s}": n for (a, s), n in sorted(total.items())},
    }  # fmt: skip


async def drive(args: argparse.Namespace, url: str, pid: int, app_key: str, admin_key: str) -> dict:
    load = Load(url, app_key, admin_key, args.max_tokens)
    start = time.monotonic()
    deadline = start + 60 * args.minutes
    timeline: list[dict] = []
    await asyncio.gather(
        *(load.client(deadline) for _ in range(args.clients)),
        load.reloads(deadline, args.reload_every_s),
        sample(load, pid, start, deadline, args.sample_s, timeline),
    )
    return {"timeline": timeline, "verdict": verdict(timeline, args.warmup_min, load)}


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-min", type=float, default=5)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sample-s", type=float, default=30)
    ap.add_argument("--reload-every-s", type=float, default=120)
    ap.add_argument("--home", type=Path, default=None, help="TUNELOOP_HOME (default: a fresh temporary one)")
    ap.add_argument("--out", type=Path, default=Path("serve_soak.json"))
    ap.add_argument(
        "--rescore", type=Path, default=None, help="recompute the verdict's memory part of a saved run"
    )
    args = ap.parse_args()
    if args.rescore:
        saved = json.loads(args.rescore.read_text())
        mem = verdict(saved["timeline"], saved["setup"]["warmup_min"], None)
        memory = ("rss", "memory", "fds", "p50")
        kept = {k: v for k, v in saved["verdict"].items() if not k.startswith(memory)}
        saved["verdict"] = {**{k: v for k, v in mem.items() if k.startswith(memory)}, **kept}
        args.rescore.write_text(json.dumps(saved, indent=1))
        print(json.dumps(saved["verdict"], indent=1))
        return
    home = args.home or Path(tempfile.mkdtemp(prefix="soak-"))
    config, app_key, admin_key = prepare(home)
    (home / "soak.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    beside = Path(sys.executable).parent / "tuneloop"  # the venv's command, as the README runs it
    exe = str(beside) if beside.exists() else shutil.which("tuneloop")
    if exe is None:
        raise SystemExit("the `tuneloop` command is not installed (pip install -e '.[serve]')")
    cmd = [exe, "serve", "--config", str(home / "soak.yaml"), "--port", str(port)]
    log = open(home / "server.log", "w")  # noqa: SIM115 - open for the server's whole life
    proc = subprocess.Popen(cmd, env={**os.environ, "TUNELOOP_HOME": str(home)}, stdout=log, stderr=log)
    try:
        wait_ready(url, proc)
        result = asyncio.run(drive(args, url, proc.pid, app_key, admin_key))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    result["setup"] = {"minutes": args.minutes, "clients": args.clients, "max_tokens": args.max_tokens,
                       "warmup_min": args.warmup_min, "model": MODEL, "cpus": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["verdict"], indent=1))


if __name__ == "__main__":
    main()
