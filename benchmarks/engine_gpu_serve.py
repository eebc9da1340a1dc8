"""Online serving on one GPU through the whole HTTP gateway, against the engine without it (issue 11).

A Llama-3-8B-shaped model with random bf16 weights; streamed chat requests of ~128 prompt tokens and
exactly 128 new tokens, closed loop at 32 and 128 concurrent clients (4x as many requests as clients,
after a warm-up). The same load three ways on one engine (one build, one KV cache, one set of graphs):

  engine  AsyncEngine.submit(token ids), consumed in this process: the engine alone
  client  LocalClient.generate(messages): + chat template, tokenizer, incremental detokenizer
  http    the load generator of `tuneloop bench serve` (tuneloop.bench.serve) in its own process ->
          uvicorn on 127.0.0.1 -> the gateway as served (API key checked in SQLite, request log,
          Prometheus metrics, admission gate) -> the same LocalClient

so http - engine is the gateway's share of TTFT and of the gap between tokens (ITL: every gap
between two text chunks; TPOT: each request's average gap). Prompts carry a tag per run, so no run
finds another's prompts in the prefix cache (only the chat template's system prompt is shared).

Choices, so the numbers read right:
- Tokenizer: no Llama-3 tokenizer is available offline; SmolLM2's (byte-level BPE as Llama 3's,
  vocab 49152, carried in .devcarry/smollm2-shape) is used, and the model takes vocab_size 49152 so
  every sampled id decodes: the LM head is 49152 x 4096 instead of 128256 x 4096 (~4 % fewer weight
  bytes per decode step than the real 8B).
- Temperature 1 (the API default): random weights under greedy decoding tend to repeat one token.
  The model has eos_token_id -1 and no generation_config, so every request runs to max_tokens.
- Engine: max_num_seqs 256, max_num_batched_tokens 4096 (as benchmarks/engine_gpu.py), and the
  gate's max_concurrency 256 (serve.yaml), so all 128 streams generate at once. `tuneloop serve`
  itself builds its engine with EngineConfig's defaults (64 sequences, 2048 tokens a step).

    PYTHONPATH=src:.devcarry:/tmp/site python3 benchmarks/engine_gpu_serve.py $OUT [--tiny]
        [--concurrency 16,64] [--per-client 2] [--new 64] [--tiers engine,client,http]
        [--simulate-step-ms 20] [--profile]

--tiny runs a 2-layer model on the CPU. Its steps cost CPU themselves (sampling a 49152-token
vocabulary row by row), so to see the text layer and the gateway alone (their cost is per token per
stream in Python, the same on any machine) add --simulate-step-ms: the real AsyncEngine over a
stand-in LLMEngine whose step sleeps, GIL released, as a GPU step does (20 ms ~ the 8B at 128
streams), then hands every request a random token id. --profile writes cProfile stats of every
thread (engine step loop, main: the engine and client tiers, uvicorn: the http tier) to
$OUT/profile_*.txt (the timings of a profiled run are not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import importlib.util
import io
import itertools
import json
import os
import pstats
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from engine_gpu import LLAMA3_8B, TINY, build_engine  # the engine benchmark's shapes and builder
from server_metrics import bucket_quantiles, ttft_buckets

from tuneloop.bench.serve import Sample, prompt_text, summarize
from tuneloop.engine import SamplingParams
from tuneloop.engine.async_engine import AsyncEngine
from tuneloop.engine.engine import EngineStats
from tuneloop.engine.outputs import RequestOutput
from tuneloop.engine.process import EngineProcess
from tuneloop.models.loading import load_tokenizer
from tuneloop.serve.client import GenerateRequest
from tuneloop.serve.local import LocalClient, SharedEngine

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / ".devcarry" / "smollm2-shape"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
VOCAB = 49152  # the tokenizer's
NAME = "bench"  # the served model name
ENGINE = dict(max_num_seqs=256, max_num_batched_tokens=4096)
DEFAULTS = False  # --defaults
PROMPT_TOKENS = 128
GPU = dict(concurrency=[32, 128], per_client=4, new=128)
SMALL = dict(concurrency=[4, 8], per_client=2, new=16)  # --tiny: CPU, a 2-layer model

# the load generator's process: what `tuneloop bench serve --stream --json` runs, plus its CPU time
CLIENT = """
import json, sys, time
from tuneloop.bench.serve import run
cpu = time.process_time()
report = run(**json.loads(sys.argv[1]))
report["client_cpu_s"] = round(time.process_time() - cpu, 2)
print(json.dumps(report))
"""


def log(*args: object) -> None:
    print(*args, flush=True)


# ------------------------------------------------------------------ the model and its client


class SimulatedEngine:
    """An `LLMEngine` stand-in for the text layer's cost alone (--simulate-step-ms): each step sleeps
    as a GPU step would (GIL released), then gives every running request one random token id. Prefill
    takes one step; nothing else (blocks, preemption) is modelled."""

    def __init__(self, step_s: float, folder: Path, vocab: int, max_num_seqs: int = 256, host_s: float = 0.0):
        self.step_s, self.vocab, self.max_num_seqs, self.host_s = step_s, vocab, max_num_seqs, host_s
        self.config = type("Config", (), {"model": str(folder)})()
        self.runner = type("Runner", (), {"num_blocks": 0})()
        self.waiting: list = []
        self.running: dict[str, list] = {}  # request id -> [params, output ids, prompt length]
        self.rng = random.Random(0)
        self.steps = 0

    def add_request(self, prompt_ids, params=None, request_id=None, priority=0, lora=None):
        request_id = request_id or uuid.uuid4().hex
        self.waiting.append((request_id, [params or SamplingParams(), [], len(prompt_ids)]))
        return type("Seq", (), {"request_id": request_id})()

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> bool:
        self.waiting = [w for w in self.waiting if w[0] != request_id]
        return self.running.pop(request_id, None) is not None

    def step(self) -> list[RequestOutput]:
        time.sleep(self.step_s)
        # the real engine's own Python per step (scheduler, block tables, step inputs, outputs), which
        # holds the GIL: 0.44 s over 127 decode steps at 256 rows on the H100 (BENCHMARKS.md)
        end = time.perf_counter() + self.host_s
        while time.perf_counter() < end:
            pass
        self.steps += 1
        while self.waiting and len(self.running) < self.max_num_seqs:
            request_id, state = self.waiting.pop(0)
            self.running[request_id] = state
        outputs = []
        for request_id, (params, ids, prompt) in list(self.running.items()):
            ids.append(self.rng.randrange(self.vocab))
            done = len(ids) >= params.max_tokens
            outputs.append(RequestOutput(request_id, ids[-1:], done, "length" if done else None,
                                         num_prompt_tokens=prompt))  # fmt: skip
            if done:
                del self.running[request_id]
        return outputs

    def stats(self) -> EngineStats:
        return EngineStats(len(self.running), len(self.waiting), 0.0, 0, 0.0, 0, self.steps, 0, 0, 0.0)


def build_client(shape: dict, device: str, tiny: bool, simulate_step_s: float | None = None,
                 host_s: float = 0.0, process: bool = False) -> LocalClient:  # fmt: skip
    """The engine of engine_gpu.py, plus the tokenizer files in its model folder, behind a LocalClient:
    an AsyncEngine in this process, or (`process`) an EngineProcess building the same engine in its own."""
    folder = Path(tempfile.mkdtemp())
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / name, folder / name)
    if simulate_step_s is not None:
        build = functools.partial(
            SimulatedEngine, simulate_step_s, folder, VOCAB, ENGINE["max_num_seqs"], host_s
        )
    else:
        kw = {**ENGINE, **({"kv_cache_gib": 0.05} if tiny else {})}
        if DEFAULTS:  # EngineConfig's own choices (engine/sizing.py), as `tuneloop serve` builds it
            kw = {k: v for k, v in kw.items() if k == "kv_cache_gib"}
            kw["prefill_attention"] = "auto"
        build = functools.partial(build_engine, shape, device, folder=folder, **kw)
    engine = EngineProcess(folder, build=build) if process else AsyncEngine(build())
    return LocalClient(SharedEngine(engine, load_tokenizer(folder), folder))


def chat_ids(client: LocalClient, text: str) -> list[int]:
    # the server's own path from a user message to prompt ids, so every tier sees the same tokens
    return client._prompt_ids(GenerateRequest(request_id="ids", messages=[{"role": "user", "content": text}]))


def prompt_words(client: LocalClient, target: int) -> int:
    """Words of `prompt_text` that give about `target` prompt tokens after the chat template."""
    words = 1
    while statistics.mean(len(chat_ids(client, prompt_text(words, i, "x000"))) for i in range(8)) < target:
        words += 1
    return words


def tag(tier: str, concurrency: int) -> str:
    return f"{tier[0]}{concurrency:03d}"  # same length for every run: same prompt lengths


# ------------------------------------------------------------------ engine and client tiers


def _sample(start: float, times: list[float], tokens: int) -> Sample:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ttft = times[0] - start if times else None
    return Sample(200, time.perf_counter() - start, ttft, tokens, gaps)


async def _engine_one(client: LocalClient, ids: list[int], new: int) -> Sample:
    params = SamplingParams(max_tokens=new, temperature=1.0)
    start, times, tokens = time.perf_counter(), [], 0
    async for out in await client.shared.engine.submit(ids, params):
        times.append(time.perf_counter())  # one output per step: one token
        tokens += len(out.new_token_ids)
    return _sample(start, times, tokens)


async def _client_one(client: LocalClient, text: str, new: int) -> Sample:
    messages = [{"role": "user", "content": text}]
    request = GenerateRequest(request_id=uuid.uuid4().hex, messages=messages, max_tokens=new)
    start, times, tokens = time.perf_counter(), [], 0
    async for delta in client.generate(request):
        if delta.text:  # as the HTTP client counts: chunks that carry text
            times.append(time.perf_counter())
        if delta.finish_reason is not None:
            tokens = delta.completion_tokens
    return _sample(start, times, tokens)


async def _closed_loop(one: Callable[[int], Awaitable[Sample]], n: int, clients: int) -> tuple[list, float]:
    todo, samples = iter(range(n)), []

    async def worker() -> None:
        for i in todo:
            samples.append(await one(i))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return samples, time.perf_counter() - start


def direct(client: LocalClient, tier: str, clients: int, n: int, words: int, new: int, label: str) -> dict:
    """One closed-loop run without HTTP; `tier` engine (token ids) or client (text)."""
    texts = [prompt_text(words, i, label) for i in range(n)]
    ids = [chat_ids(client, t) for t in texts]
    if tier == "engine":
        one = lambda i: _engine_one(client, ids[i], new)  # noqa: E731
    else:
        one = lambda i: _client_one(client, texts[i], new)  # noqa: E731
    before, cpu = client.shared.engine.stats(), time.process_time()
    samples, wall = asyncio.run(_closed_loop(one, n, clients))
    after = client.shared.engine.stats()
    # under 1: the detokenizer held text back (a split UTF-8 character), so some gaps span 2 tokens
    chunks = sum(len(s.gaps) + 1 for s in samples if s.ttft is not None)
    return {"tier": tier, "concurrency": clients, "requests": n, "wall_s": round(wall, 2),
            "prompt_tokens_mean": round(statistics.mean(map(len, ids)), 1), **summarize(samples, wall),
            "text_chunks_per_token": round(chunks / sum(s.completion_tokens for s in samples), 3),
            "process_cpu_util": round((time.process_time() - cpu) / wall, 2),
            "preemptions": after.preemptions - before.preemptions}  # fmt: skip


# ------------------------------------------------------------------ the HTTP tier


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(client: LocalClient) -> Iterator[tuple[str, str]]:
    """The real app under uvicorn on 127.0.0.1 (as tests/serve/conftest.py): yields (url, API key)."""
    import uvicorn

    from tuneloop.serve import ServeConfig, create_app
    from tuneloop.serve.keys import KeyStore

    entry = {"name": NAME, "model": str(client.shared.folder), "max_concurrency": 256, "max_queue": 256}
    config = ServeConfig.model_validate({"models": [entry]})  # auth, request log, metrics: the defaults
    key, _ = KeyStore().create("bench", scopes=["inference"])
    app = create_app(config, {NAME: client})  # the lifespan warms the client up
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", key
    finally:
        server.should_exit = True  # the lifespan then shuts the engine down
        thread.join(timeout=60)


def http(url: str, key: str, clients: int, n: int, words: int, new: int, label: str) -> dict:
    """One run of tuneloop.bench.serve in a child process (its own GIL, as a real client)."""
    args = dict(url=url, model=NAME, requests=n, concurrency=clients, prompt_len=words,
                max_tokens=new, stream=True, api_key=key, tag=label)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cpu, before = time.process_time(), ttft_buckets(url, NAME)
    done = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=400)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    wall = report["requests"] * (1 - report["error_rate"] - report["rate_429"]) / max(report["qps"], 1e-9)
    report.pop("url")
    # measured where the server writes the first chunk: what TTFT the client adds on top is its own
    report["server_ttft_bucket_s"] = bucket_quantiles(before, ttft_buckets(url, NAME))
    # near 1.0 (one core): that process is the bottleneck, not the engine
    return {"tier": "http", **report, "wall_s": round(wall, 2),
            "client_cpu_util": round(report["client_cpu_s"] / wall, 2),
            "server_process_cpu_util": round((time.process_time() - cpu) / wall, 2)}  # fmt: skip


def http_runs(client: LocalClient, plan: dict, words: int, t0: float) -> list[dict]:
    runs = []
    with gateway(client) as (url, key):
        log(f"server up at {url} ({time.perf_counter() - t0:.0f} s)")
        http(url, key, max(plan["concurrency"]), max(plan["concurrency"]), words, 16, "v000")  # warm-up
        for c in plan["concurrency"]:
            runs.append(http(url, key, c, plan["per_client"] * c, words, plan["new"], tag("http", c)))
            show(runs[-1])
    return runs


# ------------------------------------------------------------------ profile


class ThreadProfiles:
    """cProfile in this thread and in every thread started after `start` (engine loop, uvicorn)."""

    def __init__(self) -> None:
        self.profiles: dict[str, list[cProfile.Profile]] = {}

    def start(self) -> None:
        self._add("main")
        threading.setprofile(self._hook)

    def _hook(self, *_: object) -> None:
        sys.setprofile(None)
        self._add(threading.current_thread().name)

    def _add(self, name: str) -> None:
        profile = cProfile.Profile()
        self.profiles.setdefault(name.rstrip("0123456789-").split(" (")[0], []).append(profile)
        profile.enable()

    def write(self, out: Path, top: int = 40) -> None:
        """One file per thread name (worker threads of one pool merged), by own time then cumulative."""
        threading.setprofile(None)
        self.profiles["main"][0].disable()  # first: Stats() disables this thread's hook, whoever's it is
        for name, profiles in self.profiles.items():
            text = io.StringIO()
            stats = pstats.Stats(*profiles, stream=text)
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats(top)
            slug = "".join(c if c.isalnum() else "_" for c in name)
            (out / f"profile_{slug}.txt").write_text(text.getvalue())


# ------------------------------------------------------------------ report


def _ms(pct: dict, key: str) -> float | None:
    return None if pct[key] is None else round(1000 * pct[key], 2)


def summary(runs: list[dict]) -> dict:
    """Per client count: each tier's TTFT / ITL / TPOT in ms and tok/s, and http - engine."""
    out: dict = {}
    for r in runs:
        row = {f"{m}_{p}_ms": _ms(r[f"{m}_s"], p) for m in ("ttft", "itl", "tpot") for p in ("p50", "p99")}
        row["output_tokens_per_s"] = r["output_tokens_per_s"]
        out.setdefault(str(r["concurrency"]), {})[r["tier"]] = row
    for tiers in out.values():
        if "http" in tiers and "engine" in tiers:
            h, e = tiers["http"], tiers["engine"]
            tiers["gateway_overhead"] = {k: None if h[k] is None or e[k] is None else round(h[k] - e[k], 2)
                                         for k in h if k.endswith("_ms")}  # fmt: skip
    return out


def show(run: dict) -> None:
    t, i, p = run["ttft_s"], run["itl_s"], run["tpot_s"]
    log(f"  {run['tier']:6} c={run['concurrency']:<4} n={run['requests']:<4} "
        f"TTFT p50/p99 {_ms(t, 'p50')}/{_ms(t, 'p99')} ms  ITL p50/p99 {_ms(i, 'p50')}/{_ms(i, 'p99')} ms  "
        f"TPOT p50 {_ms(p, 'p50')} ms  {run['output_tokens_per_s']} tok/s  errors {run['error_rate']}"
        + (f"  server TTFT p50/p99 <= {run['server_ttft_bucket_s']}" if "server_ttft_bucket_s" in run else ""))  # fmt: skip


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU")
    parser.add_argument("--concurrency", help="client counts, e.g. 16,64 (default: 32,128; tiny 4,8)")
    parser.add_argument("--per-client", type=int, help="requests per client (default: 4; tiny 2)")
    parser.add_argument("--new", type=int, help="new tokens per request (default: 128; tiny 16)")
    parser.add_argument("--tiers", default="engine,client,http", help="which tiers to run")
    parser.add_argument("--simulate-step-ms", type=float,
                        help="no model: each engine step sleeps this long (as a GPU step, GIL released) "
                        "and gives every request a random token, so the text layer and gateway are all "
                        "that costs CPU")  # fmt: skip
    parser.add_argument("--simulate-host-ms", type=float, default=0.0,
                        help="with --simulate-step-ms: Python work per step holding the GIL, as the real "
                        "engine's scheduler and outputs do (~3.5 ms at 256 rows on the H100)")  # fmt: skip
    parser.add_argument("--engine-process", action="store_true",
                        help="the engine steps in its own process (EngineProcess), not a thread of the server's")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile every thread -> OUT/profile_*.txt")
    parser.add_argument("--defaults", action="store_true",
                        help="the engine as `tuneloop serve` builds it: EngineConfig defaults (sized to the "
                        "device) and, on CUDA, the engine in its own process")  # fmt: skip
    args = parser.parse_args()
    global DEFAULTS
    DEFAULTS = args.defaults
    if DEFAULTS and torch.cuda.is_available() and not args.tiny:
        args.engine_process = True
    out, tiny, tiers = args.out, args.tiny, args.tiers.split(",")
    out.mkdir(parents=True, exist_ok=True)
    profiles = ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.start()
    os.environ["TUNELOOP_HOME"] = tempfile.mkdtemp(prefix="tuneloop-home-")  # keys, request log
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    shape = {**(TINY if tiny else LLAMA3_8B), "vocab_size": VOCAB}
    plan = dict(SMALL if tiny else GPU)
    if args.concurrency:
        plan["concurrency"] = [int(c) for c in args.concurrency.split(",")]
    plan.update({k: v for k, v in (("per_client", args.per_client), ("new", args.new)) if v is not None})
    new, top = plan["new"], max(plan["concurrency"])
    res: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "engine": {**({"defaults": True} if args.defaults else ENGINE), "gate_max_concurrency": 256},
        "tokenizer": "SmolLM2 (.devcarry/smollm2-shape), vocab 49152",
        "uvicorn": {
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        },
        "new_tokens": new,
        "plan": plan,
        "temperature": 1.0,
    }
    t0 = time.perf_counter()
    simulate = None if args.simulate_step_ms is None else args.simulate_step_ms / 1000
    client = build_client(shape, device, tiny, simulate, args.simulate_host_ms / 1000, args.engine_process)
    res["simulated_step_ms"], res["simulated_host_ms"] = args.simulate_step_ms, args.simulate_host_ms
    res["engine_process"] = args.engine_process
    res["kv_blocks"] = client.shared.engine.stats().kv_blocks
    res["build_s"] = round(time.perf_counter() - t0, 1)
    words = prompt_words(client, PROMPT_TOKENS)
    res["prompt_words"] = words
    log(f"built in {res['build_s']} s on {res['device']}; {words} words ~ {PROMPT_TOKENS} prompt tokens", res)

    runs: list[dict] = []
    direct(client, "engine", top, top, words, 16, "w000")  # warm-up: compiled ops, graphs, allocator
    log(f"engine warm-up done at {time.perf_counter() - t0:.0f} s")
    for c in plan["concurrency"]:
        for tier in [t for t in ("engine", "client") if t in tiers]:
            runs.append(direct(client, tier, c, plan["per_client"] * c, words, new, tag(tier, c)))
            show(runs[-1])
    if "http" in tiers:
        runs += http_runs(client, plan, words, t0)
    if profiles is not None:
        profiles.write(out)
    res["runs"] = runs
    res["summary"] = summary(runs)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    if device == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    name = "engine_gpu_serve_process.json" if args.engine_process else "engine_gpu_serve.json"
    if args.defaults:
        name = "engine_gpu_serve_defaults.json"
    (out / name).write_text(json.dumps(res, indent=1))
    log(json.dumps(res["summary"], indent=1))
    log(f"done in {res['total_s']} s -> {out / name}")


if __name__ == "__main__":
    main()
