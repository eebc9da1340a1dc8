"""Load generator for any OpenAI-compatible server (tuneloop serve, vLLM): closed loop, fixed concurrency.

Each client sends chat requests back to back; the report gives QPS, latency percentiles, TTFT,
time per output token and inter-token latency (streaming), and the error and 429 rates, as a dict
ready for JSON.

TPOT is each request's average ((latency - TTFT) / (tokens - 1)), so a stall inside a stream is
spread over the request; ITL is every gap between two chunks that carry text, over all requests,
so its P99 shows the stalls (as vLLM's benchmark reports both).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Sample:
    status: int
    latency: float
    ttft: float | None = None
    completion_tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive text chunks


def prompt_text(words: int, request: int, tag: str = "") -> str:
    """The user message of request number `request`; another `tag` gives other prompts."""
    # distinct from the first word on, so the prefix cache cannot serve one request's prompt to another
    # (nor a later run's, with another tag: every run numbers its requests from 0)
    return " ".join(f"{tag}r{request}w{i % 50}" for i in range(words))


async def _one(c: aiohttp.ClientSession, url: str, body: dict, stream: bool) -> Sample:
    start = time.perf_counter()
    async with c.post(url, json=body) as r:
        if not stream or r.status != 200:
            data = await r.json(content_type=None) if r.status == 200 else await r.read()
            tokens = data.get("usage", {}).get("completion_tokens", 0) if r.status == 200 else 0
            return Sample(r.status, time.perf_counter() - start, None, tokens)
        ttft, tokens, last, gaps = None, 0, None, []
        async for raw in r.content:  # one SSE line at a time
            if not raw.startswith(b"data:") or raw[5:].strip() == b"[DONE]":
                continue
            chunk = json.loads(raw[5:])
            if any((ch.get("delta") or {}).get("content") for ch in chunk.get("choices") or []):
                now = time.perf_counter()
                if last is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        return Sample(r.status, time.perf_counter() - start, ttft, tokens, gaps)


async def _run(
    url: str,
    requests: int,
    concurrency: int,
    body: dict,
    prompt_len: int,
    stream: bool,
    api_key: str | None,
    tag: str,
) -> tuple[list[Sample], float]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    todo = iter(range(requests))
    samples: list[Sample] = []
    endpoint = url.rstrip("/") + "/chat/completions"

    async def client(c: aiohttp.ClientSession) -> None:
        for i in todo:
            try:
                messages = [{"role": "user", "content": prompt_text(prompt_len, i, tag)}]
                samples.append(await _one(c, endpoint, {**body, "messages": messages}, stream))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                samples.append(Sample(0, 0.0))

    # aiohttp, as vLLM's benchmark: with httpx as the client, 128 streams on a 2-core machine measured
    # a P90 time to first token of 3.9 s against a server whose own was 0.2 s (BENCHMARKS.md)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        return samples, time.perf_counter() - start


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    if len(values) == 1:
        return {k: round(values[0], 4) for k in ("p50", "p90", "p99")}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 4), "p90": round(q[89], 4), "p99": round(q[98], 4)}


def run(
    url: str,
    model: str,
    requests: int = 100,
    concurrency: int = 8,
    prompt_len: int = 64,
    max_tokens: int = 64,
    stream: bool = False,
    api_key: str | None = None,
    tag: str = "",
) -> dict:
    """Load `url` (…/v1) and report; latencies in seconds. `tag` varies the prompts between runs."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    samples, wall = asyncio.run(_run(url, requests, concurrency, body, prompt_len, stream, api_key, tag))
    return {
        "url": url,
        "model": model,
        "requests": len(samples),
        "concurrency": concurrency,
        "stream": stream,
        **summarize(samples, wall),
    }


def summarize(samples: list[Sample], wall: float) -> dict:
    """The figures of one run from its samples (any client that fills them, not only this one's)."""
    ok = [s for s in samples if s.status == 200]
    tpot = [
        (s.latency - s.ttft) / (s.completion_tokens - 1) for s in ok if s.ttft and s.completion_tokens > 1
    ]
    return {
        "qps": round(len(ok) / wall, 2) if wall else 0.0,
        "output_tokens_per_s": round(sum(s.completion_tokens for s in ok) / wall, 1) if wall else 0.0,
        "latency_s": _pct([s.latency for s in ok]),
        "ttft_s": _pct([s.ttft for s in ok if s.ttft is not None]),
        "tpot_s": _pct(tpot),
        "itl_s": _pct([g for s in ok for g in s.gaps]),
        "error_rate": round(sum(s.status not in (200, 429) for s in samples) / len(samples), 4),
        "rate_429": round(sum(s.status == 429 for s in samples) / len(samples), 4),
    }
