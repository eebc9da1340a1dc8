"""Tool calling on the default model, before and after a small LoRA fine-tune on synthetic tool data.

The suite (benchmarks/data/tool_calling_suite.json) is 62 hand-written requests over three tools
(get_weather, search_products, create_ticket), each with the expected call, 10 of them with none.
Every request goes through the real server (the gateway app with its engine, as `tuneloop serve`
builds it, on a local port) and the official `openai` client, greedy, with tool_choice `auto` and
`required`; the reply's `tool_calls` are scored with `tuneloop eval`'s metrics
(evaluation.metrics.score_tool_calls):

- valid_call: a call was made, to one of the tools, with arguments that are a JSON object;
- correct_function: the expected function; arguments_match: the expected arguments (JSON-equal);
- no_call_correct (auto only, the 10 chat requests): no call was made.
`required` is asked only of the 52 requests that expect a call (it forces one).

The fine-tune: `tuneloop train` (the CLI, LoRA) on rows from benchmarks/tool_calling_data.py,
disjoint from the suite; by default 48 rows, 12 steps of 4 (one epoch): each row is ~510 tokens
through the template (the tools block is most of it), and a step takes ~60-90 s on the shared
2-core CPU. The base model and the adapter are served side by side on one engine (`lora:` in the
serve config), so both are measured in the same run.

    python benchmarks/tool_calling.py OUT_DIR [--rows 48] [--max-steps 12]
    python benchmarks/tool_calling.py OUT_DIR --adapter RUN/model      # skip training
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn
from openai import AsyncOpenAI

from tuneloop.evaluation.metrics import mean_scores, score_tool_calls
from tuneloop.models.catalog import DEFAULT_MODEL
from tuneloop.serve import ServeConfig, create_app

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tool_calling_data import SUITE, generate  # noqa: E402

TRAIN_CONFIG = """\
# LoRA SFT of the default model on synthetic tool-call rows (benchmarks/tool_calling_data.py)
objective: sft
method: lora
data: {{path: {data}, max_length: 640}}
lora: {{rank: 16, alpha: 32, dropout: 0.0, targets: all-linear}}
optim: {{lr: 2.0e-3, schedule: cosine, warmup_ratio: 0.05, weight_decay: 0.0}}
batch: {{micro_batch: 4, global_batch: 4}}
max_steps: {steps}
eval: {{final: false}}
tracking: {{mlflow: false, tensorboard: false}}
seed: 0
"""


def fine_tune(model: str, out: Path, rows: int, steps: int) -> tuple[Path, float]:
    """(adapter folder, seconds): `tuneloop train` on `rows` synthetic rows for `steps` steps."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generate(rows)), encoding="utf-8")
    config = out / "train.yaml"
    config.write_text(TRAIN_CONFIG.format(data=data / "train.jsonl", steps=steps), encoding="utf-8")
    run_dir = out / "run"
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "tuneloop", "train", str(config), f"model={model}", f"output_dir={run_dir}"]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    return run_dir / "model", time.perf_counter() - started


def serve(model: str, adapter: Path | None) -> tuple[uvicorn.Server, str]:
    """The gateway with the base model (`base`) and the adapter on it (`tuned`), on a free local port."""
    home = Path(tempfile.mkdtemp(prefix="tool-bench-"))
    models = [{"name": "base", "model": model}]
    if adapter is not None:
        models.append({"name": "tuned", "model": model, "lora": str(adapter)})
    cfg = ServeConfig.model_validate(
        {
            "models": models,
            "auth": {"enabled": False, "database_url": f"sqlite:///{home}/gw.db"},
            "log": {"path": str(home / "requests.jsonl")},
        }
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}/v1"


async def ask(
    client: AsyncOpenAI, model: str, case: dict, tools: list, choice: str, max_tokens: int, parallel: bool
) -> dict:
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": case["request"]}],
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        temperature=0,
        max_tokens=max_tokens,
    )
    message = response.choices[0].message
    calls = [c.model_dump() for c in message.tool_calls or []]
    expected = []
    if case["expected_function"]:
        arguments = json.dumps(case["expected_arguments"])
        expected = [
            {"type": "function", "function": {"name": case["expected_function"], "arguments": arguments}}
        ]
    names = [t["function"]["name"] for t in tools]
    return {
        "id": case["id"],
        "finish_reason": response.choices[0].finish_reason,
        "content": message.content,
        "tool_calls": [c["function"] for c in calls],
        "scores": score_tool_calls(calls, expected, names),
    }


async def measure(
    base_url: str,
    model: str,
    suite: dict,
    max_tokens: int,
    concurrency: int,
    choices: list[str],
    parallel: bool,
) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(case: dict, choice: str) -> dict:
        async with gate:
            return await ask(client, model, case, suite["tools"], choice, max_tokens, parallel)

    out: dict[str, Any] = {}
    for choice in choices:
        cases = [c for c in suite["cases"] if choice == "auto" or c["expected_function"]]
        started = time.perf_counter()
        results = await asyncio.gather(*(one(c, choice) for c in cases))
        out[choice] = {
            "requests": len(cases),
            "seconds": round(time.perf_counter() - started, 1),
            "metrics": {k: round(v, 4) for k, v in mean_scores(r["scores"] for r in results).items()},
            "finish_reasons": dict(Counter(r["finish_reason"] for r in results)),
            "results": results,
        }
        print(json.dumps({"model": model, "tool_choice": choice, **out[choice]["metrics"]}), flush=True)
    await client.close()
    return out


def table(report: dict[str, Any]) -> str:
    names = ("valid_call", "correct_function", "arguments_match", "no_call_correct")
    lines = ["| model | tool_choice | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for model, by_choice in report["models"].items():
        for choice, r in by_choice.items():
            cells = [f"{r['metrics'][n]:.3f}" if n in r["metrics"] else "-" for n in names]
            lines.append(f"| {model} | {choice} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--rows", type=int, default=48, help="synthetic training rows (one epoch)")
    p.add_argument("--max-steps", type=int, default=12, help="LoRA steps of 4 rows")
    p.add_argument("--adapter", type=Path, help="an adapter already trained (skips training)")
    p.add_argument("--no-train", action="store_true", help="measure the base model only")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--choices", default="auto,required", help="tool_choice values to measure")
    p.add_argument(
        "--parallel-tool-calls",
        choices=["true", "false"],
        default="true",
        help="the request's parallel_tool_calls (true, the API default, lets `required` write several calls)",
    )
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    suite = json.loads(SUITE.read_text(encoding="utf-8"))
    parallel = a.parallel_tool_calls == "true"
    report: dict[str, Any] = {
        "model": a.model,
        "suite": str(SUITE.relative_to(HERE.parent)),
        "parallel_tool_calls": parallel,
        "max_tokens": a.max_tokens,
        "models": {},
    }
    adapter = a.adapter
    if adapter is None and not a.no_train:
        adapter, seconds = fine_tune(a.model, a.out, a.rows, a.max_steps)
        report["train"] = {"rows": a.rows, "steps": a.max_steps, "batch": 4, "seconds": round(seconds, 1)}
    server, base_url = serve(a.model, adapter)
    try:
        served = ["base"] + (["tuned"] if adapter is not None else [])
        for name in served:
            report["models"][name] = asyncio.run(
                measure(base_url, name, suite, a.max_tokens, a.concurrency, a.choices.split(","), parallel)
            )
    finally:
        server.should_exit = True
    summary = {m: {c: r["metrics"] for c, r in by.items()} for m, by in report["models"].items()}
    (a.out / "tool_calling.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table(report))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
