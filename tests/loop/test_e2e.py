"""The issue's end-to-end cycle on the real default model, on a CPU in a few minutes.

Production `acme/1` is the default model (it knows nothing of the fictional Nimbus Labs). Simulated
users ask the gateway questions from examples/acme-kb's training set and correct the wrong answers;
one cycle curates the corrections, trains a small LoRA, gates it (held-out corrections must improve,
general questions must not regress), canaries it to half of the traffic while the users keep rating
(5 when the answer has the fact, else 1), and promotes it. The new production version must answer
held-out paraphrases of those questions better than the old one.
"""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import openai
import pytest

from serve.conftest import run_server
from tuneloop.config import load_config
from tuneloop.evaluation.metrics import contains_answer
from tuneloop.flows.cycle import Loop
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.loop import LoopConfig
from tuneloop.serve import ServeConfig

from .conftest import KB, qa_rows, write_jsonl

FACTS = ["r7-devices", "r5-devices", "r7-color", "hq", "trial", "warranty-router"]
GENERAL = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
           ("What is the largest planet in the solar system?", "Jupiter"),
           ("What color is the sky on a clear day?", "blue")]  # fmt: skip
MARGIN = 0.0  # the default: the improvement shown (its lower bound above 0)


def paraphrases() -> list[dict]:
    rows = [json.loads(x) for x in (KB / "qa" / "heldout.jsonl").read_text().splitlines() if x.strip()]
    source = lambda r: (r.get("paraphrase_of") or r.get("source_fact") or "").rsplit("-t", 1)[0]  # noqa: E731
    return [r for r in rows if source(r) in FACTS and r["lang"] == "en"]


class Users:
    """People with their own API keys who ask through the route and rate what they get."""

    def __init__(self, url: str):
        from tuneloop.serve.keys import KeyStore

        self.url, self.store = url, KeyStore()
        self.ratings: dict[str, list[int]] = {}

    def key(self, name: str) -> str:
        return self.store.create(name, ["inference", "feedback"])[0]

    def ask(self, key: str, user: str, question: str) -> tuple[str, str, str]:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=300)
        raw = client.chat.completions.with_raw_response.create(
            model="acme",
            user=user,
            max_tokens=40,
            temperature=0,
            messages=[{"role": "user", "content": question}],
        )
        r = raw.parse()
        return r.id, r.choices[0].message.content or "", raw.headers["x-tuneloop-model-version"]

    def rate(
        self, key: str, response_id: str, rating, correction: str | None = None, user: str | None = None
    ) -> None:
        body = {"response_id": response_id, "rating": rating, "correction": correction, "user": user}
        httpx.post(f"{self.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"},
                   timeout=30).raise_for_status()  # fmt: skip


def serve_acme(default_model, registry, monkeypatch) -> ServeConfig:
    """`acme/1` (the default model) as production and candidate behind the route `acme` (all traffic to
    production), and an admin key for the loop."""
    registry.register_folder(default_model, "acme")
    registry.promote("acme", 1, "production")
    registry.promote("acme", 1, "candidate")
    cfg = ServeConfig.model_validate({
        "models": [{"name": "acme-prod", "model": "acme@production", "kv_cache_gib": 0.25},
                   {"name": "acme-cand", "model": "acme@candidate", "kv_cache_gib": 0.25}],
        "routes": [{"name": "acme", "variants": [{"model": "acme-prod", "weight": 1},
                                                 {"model": "acme-cand", "weight": 0}]}],
    })  # fmt: skip
    from tuneloop.serve.keys import KeyStore

    monkeypatch.setenv("TUNELOOP_ADMIN_KEY", KeyStore().create("loop", ["admin"])[0])
    return cfg


@pytest.mark.slow
def test_one_cycle_makes_production_answer_held_out_paraphrases_better(
    default_model, registry, tmp_path, monkeypatch
):
    cfg = serve_acme(default_model, registry, monkeypatch)
    teach = qa_rows([f"{f}-t" for f in FACTS])
    frozen = write_jsonl(tmp_path / "general.jsonl", [
        {"answer": a, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a + "."}]}
        for q, a in GENERAL])  # fmt: skip
    old = write_jsonl(tmp_path / "old.jsonl", qa_rows(["admin-user-t", "ssh-port-t"]))
    loop_cfg = load_config(LoopConfig, {
        "collect": {"served_name": "acme"},
        # split by question, seed 0: r7-devices-t1, r7-color-t1 and hq-t1 are held out, each with a paraphrase
        # in training (a fact held out whole could not improve; by response id the split was random)
        "curate": {"holdout_fraction": 0.25, "holdout_seed": 0, "knowledge": [str(KB / "docs")]},
        "retrain": {"train_config": str(KB.parent / "configs" / "acme-sft-lora.yaml"), "old_data": [str(old)],
                    "overrides": ["max_steps=40", "batch.micro_batch=4", "batch.global_batch=4", "lora.rank=8",
                                  "data.max_length=96", "eval.final=false", "tracking.mlflow=false",
                                  "tracking.tensorboard=false", "tracking.system_metrics=false"]},
        # 3 held-out corrections and 4 frozen questions: the gate's intervals are wide, so the frozen set may
        # only be shown not to drop by half (any real loop: hundreds of frozen questions, gate.min_examples 30)
        "gate": {"frozen_eval": str(frozen), "margin": MARGIN, "tolerance": 0.5, "min_examples": 3,
                 "max_new_tokens": 32},
        "canary": {"route": "acme", "production_model": "acme-prod", "candidate_model": "acme-cand",
                   "share": 0.5, "window": "1s", "poll": "0.5s", "min_requests": 4, "min_feedback": 4,
                   "max_wait": "10m", "max_latency_ratio": 5, "max_error_rate": 0.0},
    })  # fmt: skip

    with run_server(cfg) as s:
        users = Users(s.url)
        loop_cfg.canary.gateway_url = s.url
        teachers = users.key("teachers")  # one key (a key rates only its own answers), two people
        # phase 1: teachers ask the training questions and correct the wrong answers (two agree on some)
        for i, row in enumerate(teach):
            question, reference = row["messages"][0]["content"], row["messages"][1]["content"]
            rid, text, _ = users.ask(teachers, "teacher-1", question)
            if contains_answer(text, row["answer"]):
                users.rate(teachers, rid, "up")
                continue
            users.rate(teachers, rid, "down", correction=reference)
            if i % 2:
                users.rate(teachers, rid, 1, correction=reference, user="teacher-2")
        # phase 2 (during the canary): many users ask and rate by whether the answer has the fact
        started, stop = threading.Event(), threading.Event()
        served: list[str] = []

        def rate_traffic() -> None:
            started.wait()
            key = users.key("crowd")
            n = 0
            while not stop.is_set():
                row = teach[n % len(teach)]
                n += 1
                rid, text, version = users.ask(key, uuid.uuid4().hex, row["messages"][0]["content"])
                served.append(version)
                users.rate(key, rid, 5 if contains_answer(text, row["answer"]) else 1)

        thread = threading.Thread(target=rate_traffic, daemon=True)
        thread.start()

        def say(line: str) -> None:
            print(line)
            if line.startswith("[canary] started"):
                started.set()

        try:
            result = Loop("acme", loop_cfg, say=say).run_cycle()
        finally:
            stop.set()
            started.set()
            thread.join(timeout=120)
        _, _, version_after = users.ask(teachers, "teacher-1", "How many devices does the Arc R5 support?")

    curated = json.loads((LoopStore("acme").cycle_dir(1) / "curated.json").read_text())
    print("rejected in curation:", [(r["reason"], r.get("detail", "")[:160]) for r in curated["rejected"]])
    assert result.outcome == "promoted", (result, LoopStore("acme").decisions())
    assert int(registry.version("acme@production").version) == 2
    assert version_after == "acme/2" and "acme/2" in served  # the gateway serves the new version live
    decisions = {(d["stage"], d["decision"]): d["numbers"] for d in LoopStore("acme").decisions()}
    canary = decisions[("canary", "promote")]
    assert canary["candidate"]["mean_rating"] > canary["production"]["mean_rating"]
    gate = decisions[("gate", "passed")]
    assert gate["improvement_ci"][0] > MARGIN and gate["frozen_ci"][0] >= -0.5  # bounds, not estimates

    from tuneloop.evaluation.harness import evaluate
    from tuneloop.loop.answers import load_for_answers

    held_out = paraphrases()
    scores = {}
    for ref in ("acme/1", "acme@production"):
        model, tokenizer, _ = load_for_answers(ref, "cpu")
        report = evaluate(ref, held_out, max_new_tokens=40, model=model, tokenizer=tokenizer)
        scores[ref] = report.metrics["contains_answer"]
    print("held-out paraphrases, contains_answer:", scores, f"(n={len(held_out)})")
    assert scores["acme@production"] >= scores["acme/1"] + 0.25, scores
