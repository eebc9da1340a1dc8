"""Loop fixtures: rated answers written the way the gateway writes them (request log + feedback store),
a schema-ready MLflow registry per test, and builders for unit tests of the curation rules."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from registry.conftest import mlflow_template  # noqa: F401 (session fixture: the migrated MLflow db)
from tuneloop.interactions.records import Interaction, Rating
from tuneloop.loop.collect import Batch

KB = Path(__file__).resolve().parents[2] / "examples" / "acme-kb"


@pytest.fixture
def registry(tuneloop_home: Path, mlflow_template: Path):  # noqa: F811
    shutil.copy(mlflow_template, tuneloop_home / "mlflow.db")
    from tuneloop.registry import Registry

    return Registry()


def chat(question: str, answer: str, *, model: str = "bot", variant: str = "bot-prod", status: int = 200,
         latency: float = 0.1, t: float | None = None) -> dict:  # fmt: skip
    """A request-log record as the gateway writes it for a chat completion."""
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    return {"time": t if t is not None else time.time(), "request_id": uuid.uuid4().hex, "response_id": rid,
            "key_id": "k1", "model": model, "variant": variant, "model_version": "bot/1", "route": "/v1/chat/completions",
            "status": status, "latency_s": latency, "ttft_s": 0.01, "prompt_tokens": 5, "completion_tokens": 5,
            "request": {"model": model, "messages": [{"role": "user", "content": question}]},
            "response": {"id": rid, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
            if status == 200 else None, "error": None if status == 200 else "boom"}  # fmt: skip


class Traffic:
    """Writes log records and feedback where the loop collects them (TUNELOOP_HOME/serve)."""

    def __init__(self) -> None:
        from tuneloop.interactions.feedback import FeedbackStore
        from tuneloop.interactions.requestlog import default_path

        self.log = default_path()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.feedback = FeedbackStore()

    def answer(self, question: str, answer: str, **kw) -> str:
        record = chat(question, answer, **kw)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record["response_id"]

    def rate(self, response_id: str, rating, key: str = "u1", correction: str | None = None, comment=None):
        return self.feedback.add(response_id, rating, key, correction, comment)


@pytest.fixture
def traffic() -> Traffic:
    return Traffic()


def item(question: str = "How many devices does the Arc R7 support?", answer: str = "It supports 20 devices.",
         ratings: list[tuple] = ((1, "u1", None),), status: int = 200, **kw) -> Interaction:  # fmt: skip
    """An Interaction with ratings given as (rating, key, correction)."""
    rs = [Rating(i + 1, r, k, c) for i, (r, k, c) in enumerate(ratings)]
    return Interaction(kw.get("response_id", f"r-{uuid.uuid4().hex[:8]}"), "req-1", "k1", "bot", "bot-prod",
                       "bot/1", time.time(), status, [{"role": "user", "content": question}], answer, rs)  # fmt: skip


def batch(*items: Interaction) -> Batch:
    return Batch(list(items), [], {}, {"feedback_id": 99})


def qa_rows(ids: list[str], file: str = "train.jsonl") -> list[dict]:
    rows = [json.loads(x) for x in (KB / "qa" / file).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if any(r["id"].startswith(i) for i in ids)]


TINY_TRAIN = """\
objective: sft
method: lora
data: {path: unused.jsonl, max_length: 64}
lora: {rank: 4, alpha: 8, dropout: 0.0}
optim: {lr: 1.0e-3, warmup_ratio: 0.0}
batch: {micro_batch: 2, global_batch: 2}
max_steps: 2
eval: {final: false}
tracking: {mlflow: false, tensorboard: false, system_metrics: false}
precision: fp32
seed: 1
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_loop(tmp_path: Path, registry, tiny_llama: Path):
    """`bot/1` (the tiny model) as production and candidate, and a loop config dict for it."""
    registry.register_folder(tiny_llama, "bot")
    registry.promote("bot", 1, "production")
    registry.promote("bot", 1, "candidate")
    train = tmp_path / "tiny-train.yaml"
    train.write_text(TINY_TRAIN)
    frozen = write_jsonl(tmp_path / "frozen.jsonl", qa_rows(["hq-t1", "trial-t1"]))
    return {
        "collect": {"served_name": "bot"},
        "curate": {"holdout_fraction": 0.0},
        "retrain": {"train_config": str(train)},
        # the tiny random model answers nothing right, so no gate can show it better: these tests are
        # about the cycle, and this gate accepts any candidate not shown to be far worse on 2 questions
        "gate": {
            "frozen_eval": str(frozen),
            "margin": -1.0,
            "tolerance": 1.0,
            "min_examples": 1,
            "max_new_tokens": 4,
            "device": "cpu",
        },
    }
