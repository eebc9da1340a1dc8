"""The loop learns from thumbs alone: a thumb down without a correction becomes an undesirable KTO row,
a thumb up a desirable one; the manifest counts them; `retrain.objectives: auto` adds a KTO run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.flows.cycle import Loop
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.interactions.review import ReviewQueue
from tuneloop.loop import LoopConfig
from tuneloop.loop.config import CurateSettings, RetrainSettings
from tuneloop.loop.curate import Known, apply_reviews, build_dataset, curate
from tuneloop.loop.filters import TextFilters
from tuneloop.loop.retrain import _balance, objectives_for
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import read_rows

from .conftest import batch, item, write_jsonl

R7, R7_RIGHT, R7_WRONG = (
    "How many devices does the Arc R7 support?",
    "Up to 176 devices.",
    "It supports 20 devices.",
)
COLOR, COLOR_WRONG = "What colour is the Arc R7?", "It is bright red."
SSH, SSH_WRONG, SSH_FIX = "Which port does SSH use?", "Port 22.", "SSH listens on port 2222."
SETTINGS = CurateSettings(holdout_fraction=0.0)


def known(rows=()) -> Known:
    return Known.from_rows(list(rows), 0.8)


def build(tmp_path: Path, out, proposals=None) -> dict:
    return build_dataset(out.proposals if proposals is None else proposals, out, tmp_path, SETTINGS, [], [],
                         {"model": "bot", "cycle": 1})  # fmt: skip


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_thumbs_alone_become_kto_rows_counted_in_the_manifest(tmp_path):
    up = item(R7, R7_RIGHT, [(5, "u1", None)])
    down = item(COLOR, COLOR_WRONG, [(1, "u1", None)])
    fixed = item(SSH, SSH_WRONG, [(1, "u1", SSH_FIX)])
    out = curate(batch(up, down, fixed), SETTINGS, known())
    assert not out.rejected
    manifest = build(tmp_path, out)
    kto = rows(tmp_path / "kto" / "train.jsonl")
    got = [(r["prompt"][-1]["content"], r["completion"][0]["content"], r["label"]) for r in kto]
    assert got == [
        (R7, R7_RIGHT, True),
        (COLOR, COLOR_WRONG, False),
    ]  # the correction is SFT/DPO, not a thumb
    assert [r["completion_response_id"] for r in kto] == [up.response_id, down.response_id]
    sft = rows(tmp_path / "sft" / "train.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == [
        R7_RIGHT,
        SSH_FIX,
    ]  # nothing to imitate in a downvote
    assert [(r["chosen"], r["rejected"]) for r in rows(tmp_path / "dpo" / "train.jsonl")] == [
        (SSH_FIX, SSH_WRONG)
    ]
    c = manifest["counts"]
    assert (c["new_kto_train"], c["new_kto_desirable"], c["new_kto_undesirable"], c["new_kto_heldout"]) == (
        2,
        1,
        1,
        0,
    )
    assert sorted(e["response_id"] for e in manifest["examples"] if e["kind"] == "kto") == sorted(
        [up.response_id, down.response_id]
    )
    assert "kto/train.jsonl" in manifest["outputs"]
    assert len(read_rows(tmp_path / "kto" / "train.jsonl", "kto")) == 2  # what objective=kto accepts


def test_an_upvote_and_a_downvote_to_one_question_are_a_pair_and_two_kto_rows(tmp_path):
    up = item(R7, R7_RIGHT, [(5, "u1", None)])
    down = item(R7, R7_WRONG, [(1, "u2", None)])
    other = item(R7, "Twenty.", [(1, "u3", None)])  # a second downvote: beyond the pair, still a thumb
    out = curate(batch(up, down, other), SETTINGS, known())
    build(tmp_path, out)
    assert [(r["chosen"], r["rejected"]) for r in rows(tmp_path / "dpo" / "train.jsonl")] == [
        (R7_RIGHT, R7_WRONG)
    ]
    kto = rows(tmp_path / "kto" / "train.jsonl")
    assert [(r["completion"][0]["content"], r["label"]) for r in kto] == [
        (R7_RIGHT, True), (R7_WRONG, False), ("Twenty.", False)
    ]  # fmt: skip
    assert [r["completion_response_id"] for r in kto][1:] == [down.response_id, other.response_id]


def test_a_downvote_of_a_known_answer_or_a_repeated_one_is_not_learned_from(tmp_path):
    training = [{"messages": [{"role": "user", "content": R7}, {"role": "assistant", "content": R7_RIGHT}]}]
    right_downvoted = item(R7, R7_RIGHT, [(1, "u1", None)])  # e.g. a rater who wanted a longer answer
    twice = [item(COLOR, COLOR_WRONG, [(1, f"u{i}", None)]) for i in range(2)]
    out = curate(batch(right_downvoted, *twice), SETTINGS, known(training))
    assert [(r["response_id"], r["reason"]) for r in out.rejected] == [
        (right_downvoted.response_id, "downvote_of_known_answer"), (twice[1].response_id, "duplicate_in_batch")
    ]  # fmt: skip
    assert [p["response_id"] for p in out.proposals] == [twice[0].response_id]


def test_a_reviewer_approves_a_downvote_or_turns_it_into_a_correction(tmp_path):
    downs = [item(COLOR, COLOR_WRONG, [(1, "u1", None)]), item(SSH, SSH_WRONG, [(1, "u1", None)])]
    out = curate(batch(*downs), SETTINGS, known())
    queue = ReviewQueue(f"sqlite:///{tmp_path / 'review.db'}")
    assert queue.enqueue("bot", 1, out.proposals) == 2
    first, second = queue.list("bot")
    assert (first.answer, first.rejected_answer) == ("", COLOR_WRONG)  # nothing to train on; one to avoid
    queue.approve(first.id, "ann")
    queue.approve(second.id, "ann", edited=SSH_FIX)
    kept = apply_reviews(out, queue.list("bot"), TextFilters())
    build(tmp_path, out, kept)
    assert [(r["completion"][0]["content"], r["label"]) for r in rows(tmp_path / "kto" / "train.jsonl")] == [
        (COLOR_WRONG, False)
    ]
    assert [r["messages"][-1]["content"] for r in rows(tmp_path / "sft" / "train.jsonl")] == [SSH_FIX]
    assert [(r["chosen"], r["rejected"]) for r in rows(tmp_path / "dpo" / "train.jsonl")] == [
        (SSH_FIX, SSH_WRONG)
    ]


def _data(tmp_path: Path, sft: int, kto: list[bool]) -> Path:
    qa = {"messages": [{"role": "user", "content": R7}, {"role": "assistant", "content": R7_RIGHT}]}
    write_jsonl(tmp_path / "sft" / "train.jsonl", [qa] * sft)
    write_jsonl(tmp_path / "kto" / "train.jsonl",
                [{"prompt": R7, "completion": R7_WRONG, "label": label} for label in kto])  # fmt: skip
    return tmp_path


def _manifest(kto: list[bool]) -> dict:
    return {"counts": {"new_kto_undesirable": sum(1 for x in kto if not x)}}


def test_auto_objectives_add_kto_for_thumbs_down_without_a_correction(tmp_path):
    auto = RetrainSettings()
    assert auto.objectives == "auto"
    assert objectives_for(auto, _data(tmp_path / "a", 3, [True, False]), _manifest([True, False])) == [
        "sft",
        "kto",
    ]
    assert objectives_for(auto, _data(tmp_path / "b", 3, [True]), _manifest([True])) == [
        "sft"
    ]  # ups: SFT has them
    assert objectives_for(auto, _data(tmp_path / "c", 0, [False]), _manifest([False])) == ["kto"]
    listed = RetrainSettings(objectives=["kto", "sft"])
    assert objectives_for(listed, _data(tmp_path / "d", 3, [True]), _manifest([True])) == ["sft", "kto"]
    with pytest.raises(TuneloopError, match="no training rows"):
        objectives_for(auto, _data(tmp_path / "e", 0, []), _manifest([]))


def test_kto_weights_are_balanced_for_the_thumbs_unless_the_config_sets_them(tmp_path):
    data = _data(tmp_path, 0, [True, False, False, False])
    cfg = load_config(TrainConfig, None, ["data.path=x", "objective=kto"])
    _balance(cfg, data / "kto" / "train.jsonl")
    assert (cfg.kto.desirable_weight, cfg.kto.undesirable_weight) == (1.0, pytest.approx(1 / 3))
    mine = load_config(TrainConfig, None, ["data.path=x", "objective=kto", "kto.undesirable_weight=0.9"])
    _balance(mine, data / "kto" / "train.jsonl")
    assert (mine.kto.desirable_weight, mine.kto.undesirable_weight) == (1.0, 0.9)


def test_objectives_list_errors_name_the_key():
    with pytest.raises(TuneloopError, match=r"retrain\.objectives"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "x"}, "retrain": {"objectives": ["sft", "sft"]}})
    with pytest.raises(TuneloopError, match=r"retrain\.objectives"):
        load_config(LoopConfig, {"gate": {"frozen_eval": "x"}, "retrain": {"objectives": ["ppo"]}})


def test_a_cycle_with_thumbs_alone_trains_sft_then_kto(tiny_loop, traffic, registry):
    traffic.rate(traffic.answer(R7, R7_RIGHT), "up")
    for q, a in [(COLOR, COLOR_WRONG), (SSH, SSH_WRONG), ("How long is the warranty?", "Ten years.")]:
        traffic.rate(traffic.answer(q, a), "down")
    said: list[str] = []
    Loop("bot", load_config(LoopConfig, tiny_loop), say=said.append).run_cycle()
    store = LoopStore("bot")
    decisions = {(d["stage"], d["decision"]): d["numbers"] for d in store.decisions()}
    counts = decisions[("curate", "curated")]["counts"]
    assert (counts["new_kto_train"], counts["new_kto_desirable"], counts["new_kto_undesirable"]) == (4, 1, 3)
    assert "[retrain] from bot/1 (sft, kto)" in said
    runs = decisions[("retrain", "trained")]["runs"]
    assert [Path(r).name for r in runs] == ["run-sft", "run-kto"]
    metrics = json.loads((Path(runs[-1]) / "metrics.json").read_text())
    assert (metrics["data.desirable"], metrics["data.undesirable"]) == (1, 3)
    config = (Path(runs[-1]) / "config.yaml").read_text()
    assert "undesirable_weight: 0.333" in config  # balanced for 1 up and 3 downs
