"""Guided decoding (structured outputs) in the engine: what it costs, and what it buys (issue 20).

cost       tokens/s with a JSON schema against unconstrained, at 1 and 32 concurrent requests, same
           engine, same prompts, alternated (--repeats pairs, the median kept). The schema is an
           array of at least 1000 `required_fields` objects, so no guided request ends before
           --cost-tokens (every request of both sides generates exactly that many; the finish
           reasons are reported to show it).
compile    the grammar of each of the five schemas for a first request and for a cached one
           (GrammarCompiler.start), and the tokenizer view built once per engine.
adherence  --prompts chat-templated prompts x 5 schemas (guided_schemas.py), each asking for the
           JSON the schema describes (the schema is in the prompt), greedy, --new-tokens at most:
           with guided decoding (every output finished by stop must parse and validate) and the same
           requests without it (parse = the whole output, or its first {...} block, is JSON).

CPU (default model):
    PYTHONPATH=src python benchmarks/guided_decoding.py --out benchmarks/guided_decoding_cpu.json
        [--prompts 200] [--new-tokens 96] [--cost-tokens 64] [--concurrency 1,32] [--repeats 2]
        [--skip cost,compile,adherence]
GPU (--gpu): cost on a Llama-3-8B-shaped random bf16 model (engine_gpu.py's LLAMA3_8B) with the
default model's tokenizer copied beside it (tokens past its 49152 are masked off by every grammar);
compile and adherence on the default model on the GPU:
    PYTHONPATH=src:.devcarry python3 benchmarks/guided_decoding.py --gpu --out $OUT/guided_decoding_h100.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import jsonschema
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from guided_schemas import ASKS, SCHEMAS

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.grammar import GrammarCompiler
from tuneloop.engine.guided import GuidedDecoding
from tuneloop.models.resolve import resolve_model

SUBJECTS = [
    "a customer named Ana in Lisbon", "a support ticket about a broken login", "a review of a coffee shop",
    "a bug report from a mobile app", "a weather station in Oslo", "a student applying to a university",
    "a hotel booking in Rome", "a delayed train in Berlin", "an order of three books", "a dog adopted in Austin",
    "a movie review of a space film", "a patient visit at a clinic", "a car rental in Madrid",
    "a library book loan", "a bakery's daily sales", "a marathon runner's result", "a flight from Paris to Tokyo",
    "a product return request", "a concert in Seoul", "a chess tournament player", "a recipe for pancakes",
    "a software release note", "a farm's harvest report", "a museum visit", "a job application for a designer",
    "a gym membership", "a phone plan upgrade", "a hiking trail in Peru", "a restaurant reservation",
    "a school science project", "a package delivered late", "a podcast episode", "an electricity bill",
    "a new employee onboarding", "a lost wallet report", "a bike repair order", "a wedding guest list entry",
    "a smart thermostat reading", "a volunteer shift", "a board game night",
]  # fmt: skip
PHRASINGS = [
    "Describe {subject} as JSON with {ask}.",
    "Give me {ask} for {subject}. Answer with a JSON object only.",
    "Extract {ask} about {subject} and return it as JSON.",
    "Write a JSON object for {subject}: {ask}.",
    "I need {ask} for {subject}, formatted as JSON.",
]
# the cost run's schema: objects of a realistic grammar, and never complete before the token budget
LONG = {"type": "array", "minItems": 1000, "items": SCHEMAS["required_fields"]}


def default_folder() -> Path:
    return resolve_model("smollm2-135m-instruct").path


def chat_prompts(folder: Path, n: int) -> dict[str, list[list[int]]]:
    """n token-id prompts per schema, through the model's chat template."""
    tok = AutoTokenizer.from_pretrained(folder)
    out: dict[str, list[list[int]]] = {}
    for kind, schema in SCHEMAS.items():
        system = f"You answer with JSON only. The JSON must match this schema: {json.dumps(schema)}"
        rows = []
        for i in range(n):
            user = PHRASINGS[i % len(PHRASINGS)].format(subject=SUBJECTS[(i // len(PHRASINGS)) % len(SUBJECTS)],
                                                        ask=ASKS[kind])  # fmt: skip
            if i >= len(PHRASINGS) * len(SUBJECTS):
                user += f" (case {i})"
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            rows.append(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        out[kind] = [list(r["input_ids"]) if hasattr(r, "keys") else list(r) for r in rows]
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_generate(
    eng: LLMEngine, prompts: list[list[int]], params: SamplingParams
) -> tuple[float, int, dict]:
    sync()
    t = time.perf_counter()
    outs = eng.generate(prompts, params)
    sync()
    dt = time.perf_counter() - t
    return dt, sum(len(o.token_ids) for o in outs), dict(Counter(o.finish_reason for o in outs))


def cost(
    eng: LLMEngine, prompts: list[list[int]], concurrency: list[int], new: int, repeats: int
) -> list[dict]:
    free = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    guided = SamplingParams(
        max_tokens=new, temperature=0, guided=GuidedDecoding(json_schema=json.dumps(LONG))
    )
    eng.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up (first-use costs)
    eng.generate(prompts[:1], SamplingParams(max_tokens=2, temperature=0, guided=guided.guided))
    rows = []
    for n in concurrency:
        batch = [prompts[k % len(prompts)] for k in range(n)]
        runs: dict[str, list[tuple[float, int, dict]]] = {"unconstrained": [], "json_schema": []}
        for _ in range(repeats):  # alternated, so a noisy neighbour hits both sides alike
            runs["unconstrained"].append(timed_generate(eng, batch, free))
            runs["json_schema"].append(timed_generate(eng, batch, guided))
        row: dict = {"concurrency": n, "new_tokens": new}
        for side, got in runs.items():
            rates = [tokens / dt for dt, tokens, _ in got]
            row[side] = {"tokens_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates],
                         "finish": got[-1][2]}  # fmt: skip
        row["ratio_json_schema"] = round(
            row["json_schema"]["tokens_per_s"] / row["unconstrained"]["tokens_per_s"], 3
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def compile_times(folder: Path, vocab: int, eos: set[int]) -> dict:
    compiler = GrammarCompiler(folder, vocab, eos)
    t = time.perf_counter()
    compiler.tokenizer  # noqa: B018 (built once per engine, at its first guided request)
    out: dict = {"tokenizer_s": round(time.perf_counter() - t, 3), "schemas": {}}
    for kind, schema in SCHEMAS.items():
        spec = GuidedDecoding(json_schema=json.dumps(schema))
        t = time.perf_counter()
        compiler.start(spec)
        first = time.perf_counter() - t
        t = time.perf_counter()
        compiler.start(spec)
        out["schemas"][kind] = {
            "first_ms": round(first * 1e3, 2),
            "cached_ms": round((time.perf_counter() - t) * 1e3, 3),
        }
    print(json.dumps(out), flush=True)
    return out


def parses(text: str, schema: dict) -> tuple[bool, bool]:
    """(valid JSON, valid against the schema) of the whole output, or of its first {...} block."""
    candidates = [text.strip()]
    m = re.search(r"\{.*\}", text, re.S)
    if m:
        candidates.append(m.group(0))
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError:
            continue
        try:
            jsonschema.validate(value, schema)
            return True, True
        except jsonschema.ValidationError:
            return True, False
    return False, False


def adherence(eng: LLMEngine, folder: Path, prompts: dict[str, list[list[int]]], new: int) -> dict:
    decoder = Tokenizer.from_file(str(folder / "tokenizer.json"))
    out: dict = {}
    for mode in ("guided", "unguided"):
        per: dict = {}
        for kind, ps in prompts.items():
            spec = (
                GuidedDecoding(json_schema=json.dumps(SCHEMAS[kind]), name=kind) if mode == "guided" else None
            )
            t = time.perf_counter()
            outs = eng.generate(ps, SamplingParams(max_tokens=new, temperature=0, guided=spec))
            dt = time.perf_counter() - t
            stopped = [o for o in outs if o.finish_reason == "stop"]
            checks = [parses(decoder.decode(o.token_ids), SCHEMAS[kind]) for o in outs]
            stop_checks = [c for c, o in zip(checks, outs, strict=True) if o.finish_reason == "stop"]
            per[kind] = {
                "requests": len(outs),
                "finish": dict(Counter(o.finish_reason for o in outs)),
                "parse_all": sum(c[0] for c in checks),
                "valid_all": sum(c[1] for c in checks),
                "parse_of_stopped": sum(c[0] for c in stop_checks),
                "valid_of_stopped": sum(c[1] for c in stop_checks),
                "stopped": len(stopped),
                "tokens_per_s": round(sum(len(o.token_ids) for o in outs) / dt, 1),
                "example": decoder.decode(outs[0].token_ids)[:160],
            }
            print(mode, kind, json.dumps(per[kind]), flush=True)
        total = {k: sum(v[k] for v in per.values()) for k in ("requests", "stopped", "parse_all", "valid_all",
                                                                "parse_of_stopped", "valid_of_stopped")}  # fmt: skip
        out[mode] = {"schemas": per, "total": total}
    return out


def gpu_engine(tokenizer_from: Path) -> LLMEngine:
    from engine_gpu import LLAMA3_8B, build_engine

    folder = Path(tempfile.mkdtemp())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, folder / name)
    return build_engine(LLAMA3_8B, "cuda", folder=folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="guided_decoding.json")
    ap.add_argument("--gpu", action="store_true", help="cost on a Llama-3-8B-shaped model; the rest on CUDA")
    ap.add_argument("--prompts", type=int, default=200, help="adherence prompts per schema")
    ap.add_argument("--new-tokens", type=int, default=96, help="adherence: max tokens of each answer")
    ap.add_argument("--cost-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated: cost, compile, adherence")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    folder = default_folder()
    device = "cuda" if a.gpu else "cpu"
    report: dict = {"device": torch.cuda.get_device_name() if a.gpu else "cpu", "args": vars(a)}
    prompts = chat_prompts(folder, a.prompts)
    if "compile" not in skip:
        config = json.loads((folder / "config.json").read_text())
        report["compile"] = compile_times(folder, config["vocab_size"], {config["eos_token_id"]})
    concurrency = [int(c) for c in a.concurrency.split(",")]
    if "cost" not in skip:
        eng = (
            gpu_engine(folder)
            if a.gpu
            else LLMEngine.from_pretrained(folder, device=device, kv_cache_gib=1.0)
        )
        flat = [p for ps in prompts.values() for p in ps]
        report["model"] = "Llama-3-8B shape, random bf16" if a.gpu else str(folder)
        report["cost"] = cost(eng, flat, concurrency, a.cost_tokens, a.repeats)
        del eng
        if a.gpu:
            torch.cuda.empty_cache()
    if "adherence" not in skip:
        eng = LLMEngine.from_pretrained(folder, device=device, kv_cache_gib=1.0)
        report["adherence"] = adherence(eng, folder, prompts, a.new_tokens)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
