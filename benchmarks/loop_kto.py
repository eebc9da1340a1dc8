"""What thumbs alone teach: one loop cycle from thumbs-only feedback (KTO) against SFT on corrections
and against nothing, with simulated users rating a served acme model. CPU.

`--facts` facts of examples/acme-kb are used (those with held-out paraphrases, in file order).
Production `acme/1` is the default model after a short LoRA SFT (`--v1-steps`) on those facts'
training rows, merged: it knows them partly, so sampled answers are sometimes right and sometimes
wrong (what thumbs can teach from: a model that is never right gives thumbs nothing to reinforce).
Simulated users ask the gateway (the real server and the `openai` client) each of those training
questions `--samples` times, sampled at `--temperature` with the same seeds for both keys (so both
see the same answers), and rate the answer by whether it holds the fact:

- key `thumbs` gives thumbs only: up when the answer holds the fact, else down, no correction;
- key `teachers` (asking the same way) gives a thumbs-up, or a thumbs-down with the reference answer
  as the correction (what the loop learned from before KTO).

Each arm runs one real cycle (`Loop.run_cycle`: collect, curate, build, retrain, gate) on one key's
feedback (`collect.keys`), from the same production version, with no old data (only the feedback
trains) and `examples/configs/acme-sft-lora.yaml` as the train config; production and the loop state
are reset between arms; every arm's runs take `--steps` optimizer steps (the same compute). The
candidates are then scored, greedy, on the held-out paraphrases of those facts (heldout.jsonl:
questions never asked) and on the asked questions themselves: contains_answer with a paired bootstrap
95% CI of each arm's difference to production, and the reference answers' perplexity.

    PYTHONPATH=src python3 benchmarks/loop_kto.py $OUT/loop_kto.json [--work DIR] [--facts 24] [--samples 2] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "examples" / "acme-kb" / "qa"
TRAIN_CONFIG = ROOT / "examples" / "configs" / "acme-sft-lora.yaml"
GENERAL = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
           ("What is the largest planet in the solar system?", "Jupiter"),
           ("What color is the sky on a clear day?", "blue")]  # fmt: skip
ARMS = {  # name: (the key whose feedback trains, retrain.objectives)
    "corrections_sft": ("teachers", ["sft"]),
    "thumbs_sft": ("thumbs", ["sft"]),  # what the loop did with thumbs before KTO: SFT on the ups
    "thumbs_kto": ("thumbs", ["kto"]),
    "thumbs_auto": ("thumbs", "auto"),  # the default: sft, then kto (thumbs down exist)
}
QUIET = [
    "eval.final=false",
    "tracking.mlflow=false",
    "tracking.tensorboard=false",
    "tracking.system_metrics=false",
]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- production v1


def facts(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows) of the first `n` facts that have held-out paraphrases."""
    fact = lambda row_id: row_id.rsplit("-t", 1)[0]  # noqa: E731
    heldout = jsonl(KB / "heldout.jsonl")
    source = lambda r: fact(r.get("paraphrase_of") or r.get("source_fact") or "")  # noqa: E731
    chosen = list(dict.fromkeys(source(r) for r in heldout))[:n]
    train = [r for r in jsonl(KB / "train.jsonl") if fact(r["id"]) in chosen]
    return train, [r for r in heldout if source(r) in chosen]


def production(work: Path, base: str, steps: int, train: list[dict[str, Any]]) -> Path:
    """A partly trained acme model: LoRA SFT for `steps` steps on the facts' rows, merged (cached)."""
    out = work / "v1"
    if (out / "config.json").is_file():
        return out
    from tuneloop.config import load_config
    from tuneloop.export.merge import merge_adapter
    from tuneloop.train.config import TrainConfig
    from tuneloop.train.recipe import run

    data = write_jsonl(work / "v1-data.jsonl", train)

    cfg = load_config(TrainConfig, str(TRAIN_CONFIG), [f"model={base}", f"data.path={data}",
                                                       "data.val_path=null", f"max_steps={steps}",
                                                       f"output_dir={work / 'v1-run'}", *QUIET])  # fmt: skip
    result = run(cfg)
    merged, tokenizer, _ = merge_adapter(result.model_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- simulated users


def traffic(work: Path, samples: int, temperature: float, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Both keys ask every training question `samples` times through the gateway and rate (cached)."""
    done = work / "traffic.json"
    if done.is_file():
        return json.loads(done.read_text())
    import httpx
    import openai

    from tuneloop.evaluation.metrics import contains_answer
    from tuneloop.serve import ServeConfig
    from tuneloop.serve.app import create_app
    from tuneloop.serve.keys import KeyStore

    cfg = ServeConfig.model_validate({
        "models": [{"name": "acme-prod", "model": "acme@production", "kv_cache_gib": 0.5}],
        "routes": [{"name": "acme", "variants": [{"model": "acme-prod", "weight": 1}]}],
    })  # fmt: skip
    store = KeyStore()
    keys = {name: store.create(name, ["inference", "feedback"]) for name in ("thumbs", "teachers")}
    with _server(create_app(cfg)) as url:

        def one(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
            who, i, row = job
            secret = keys[who][0]
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=2, timeout=600)
            # the same seed for both keys: they get the same answers, and differ only in how they rate
            r = client.chat.completions.create(model="acme", messages=row["messages"][:1], max_tokens=40,
                                               temperature=temperature, seed=i, user=f"{who}-{i}")  # fmt: skip
            text = r.choices[0].message.content or ""
            right = contains_answer(text, row["answer"])
            correction = None if right or who == "thumbs" else row["messages"][1]["content"]
            body = {"response_id": r.id, "rating": "up" if right else "down", "correction": correction}
            httpx.post(f"{url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {secret}"},
                       timeout=60).raise_for_status()  # fmt: skip
            return {"key": who, "id": row["id"], "answer": text, "right": right}

        jobs = [(who, s, row) for s in range(samples) for row in questions for who in ("thumbs", "teachers")]
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:  # concurrent users: the engine batches them
            answers = list(pool.map(one, jobs))
    result = {"key_ids": {k: v[1].id for k, v in keys.items()}, "answers": answers,
              "seconds": round(time.perf_counter() - started, 1),
              "right_share": {k: float(np.mean([a["right"] for a in answers if a["key"] == k])) for k in keys}}  # fmt: skip
    done.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    return result


class _server:
    """The gateway in a thread of this process (uvicorn), for the `with` block."""

    def __init__(self, app: Any):
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 600
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


# ---------------------------------------------------------------- one cycle per arm


def arm(name: str, key_id: str, objectives: Any, work: Path, overrides: list[str]) -> dict[str, Any]:
    """One loop cycle on one key's feedback; the candidate's model folder and the cycle's numbers."""
    done = work / "arms" / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    from tuneloop.config import load_config
    from tuneloop.flows.cycle import Loop
    from tuneloop.interactions.loopstore import LoopStore
    from tuneloop.loop import LoopConfig
    from tuneloop.registry import Registry

    frozen = write_jsonl(work / "general.jsonl", [
        {"answer": a, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a + "."}]}
        for q, a in GENERAL])  # fmt: skip
    cfg = load_config(LoopConfig, {
        "collect": {"served_name": "acme", "keys": [key_id]},
        # every answer trains (the benchmark holds out its own questions); literal injection patterns only:
        # with no training data to anchor it, the semantic filter takes "What IP opens the admin page?"
        # for an injection (issue 18's poisoning checks are measured elsewhere)
        "curate": {"holdout_fraction": 0.0, "embedder": "none"},
        "retrain": {"objectives": objectives, "train_config": str(TRAIN_CONFIG), "overrides": [*QUIET, *overrides]},
        "gate": {"frozen_eval": str(frozen), "max_new_tokens": 16, "device": "cpu", "min_examples": 1},
    })  # fmt: skip
    store = LoopStore("acme")
    shutil.rmtree(store.root, ignore_errors=True)  # a fresh cursor: every arm sees all of its key's feedback
    started = time.perf_counter()
    result = Loop("acme", cfg, say=lambda line: print(f"  [{name}] {line}", flush=True)).run_cycle()
    seconds = time.perf_counter() - started
    decisions = {(d["stage"], d["decision"]): d["numbers"] for d in store.decisions()}
    trained = decisions.get(("retrain", "trained"), {})
    runs = trained.get("runs") or []
    out = {"outcome": result.outcome, "detail": result.detail, "counts": decisions[("curate", "curated")]["counts"],
           "rejections": decisions[("curate", "curated")]["rejections"], "runs": runs,
           "candidate": str(Path(runs[-1]) / "model") if runs else None, "cycle_seconds": round(seconds, 1),
           "steps": [json.loads((Path(r) / "metrics.json").read_text())["steps"] for r in runs]}  # fmt: skip
    registry = Registry()
    registry.promote("acme", 1, "production")  # whatever the gate did, the next arm starts from acme/1
    registry.promote("acme", 1, "candidate")
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out, indent=1))
    return out


# ---------------------------------------------------------------- scoring


def scores(ref: str, sets: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per set: contains_answer per row (greedy) and the reference answers' perplexity."""
    from tuneloop.evaluation.harness import evaluate
    from tuneloop.loop.answers import load_for_answers

    model, tokenizer, _ = load_for_answers(ref, "cpu")
    out = {}
    for name, rows in sets.items():
        report = evaluate(ref, rows, max_new_tokens=40, model=model, tokenizer=tokenizer)
        out[name] = {"contains": [s.scores["contains_answer"] for s in report.samples],
                     "perplexity": report.metrics["perplexity"]}  # fmt: skip
    return out


def paired_ci(a: list[float], b: list[float], seed: int = 0, n: int = 4000) -> tuple[float, float, float]:
    """Mean of b - a and its paired-bootstrap 95% interval."""
    d = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _summary(s: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, x in s.items():
        mean, lo, hi = paired_ci(base[name]["contains"], x["contains"])
        out[name] = {"contains_answer": round(float(np.mean(x["contains"])), 3), "delta": round(mean, 3),
                     "ci95": [round(lo, 3), round(hi, 3)], "n": len(x["contains"]),
                     "perplexity": round(x["perplexity"], 3)}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--work", type=Path, default=None, help="keeps stages between runs (default: a temp dir)")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument(
        "--facts", type=int, default=24, help="facts asked about (of 53 with held-out paraphrases)"
    )
    p.add_argument("--v1-steps", type=int, default=8, help="LoRA SFT steps of the production model")
    p.add_argument("--samples", type=int, default=2, help="answers per question and key")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of every arm's runs")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--overrides", nargs="*", default=[], help="more train overrides for every arm's runs")
    args = p.parse_args()

    from tuneloop.errors import ModelNotFoundError
    from tuneloop.models.resolve import resolve_model

    base = str(resolve_model(args.base, pull=True).path)  # before TUNELOOP_HOME moves
    work = (args.work or Path(tempfile.mkdtemp(prefix="loop-kto-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TUNELOOP_HOME"] = str(work / "home")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    train, heldout = facts(args.facts)
    v1 = production(work, base, args.v1_steps, train)
    from tuneloop.registry import Registry

    registry = Registry()
    try:
        registry.version("acme/1")
    except ModelNotFoundError:
        registry.register_folder(v1, "acme")
    registry.promote("acme", 1, "production")
    registry.promote("acme", 1, "candidate")
    t1 = time.perf_counter()
    users = traffic(work, args.samples, args.temperature, train)
    print(f"traffic: {len(users['answers'])} rated answers, right: {users['right_share']}", flush=True)
    arms = {}
    for name in args.arms.split(","):
        who, objectives = ARMS[name]
        print(f"arm {name}: {who} feedback, objectives {objectives}", flush=True)
        overrides = [f"max_steps={args.steps}", *args.overrides]
        arms[name] = arm(name, users["key_ids"][who], objectives, work, overrides)
    t2 = time.perf_counter()
    sets = {"held_out": heldout, "asked": train}
    base_scores = scores(str(v1), sets)
    results = {"production (nothing)": _summary(base_scores, base_scores)}
    for name, a in arms.items():
        if a["candidate"] is None:
            results[name] = {"outcome": a["outcome"], "detail": a["detail"]}
            continue
        results[name] = {**_summary(scores(a["candidate"], sets), base_scores), "gate": a["outcome"],
                         "counts": {k: v for k, v in a["counts"].items() if k.startswith("new_")},
                         "steps": a["steps"], "cycle_seconds": a["cycle_seconds"]}  # fmt: skip
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"CPU, {os.cpu_count()} cores (shared)",
        "command": " ".join(sys.argv), "facts": args.facts, "v1_steps": args.v1_steps, "samples": args.samples,
        "temperature": args.temperature, "steps": args.steps,
        "traffic": {"rated": len(users["answers"]), "right_share": users["right_share"], "seconds": users["seconds"]},
        "results": results, "arms": arms,
        "seconds": {"production": round(t1 - t0, 1), "arms": round(t2 - t1, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for name, r in results.items():
        print(name, json.dumps({k: r[k] for k in r if k != "counts"}))


if __name__ == "__main__":
    main()
