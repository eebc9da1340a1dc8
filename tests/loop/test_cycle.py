"""A whole cycle on the tiny model with the real MLflow registry: resume after a crash, cursor, status."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.flows.cycle import Loop
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.loop import LoopConfig
from tuneloop.loop.collect import collect

FIXES = [("How many devices does the Arc R7 support?", "It supports 8.", "The Arc R7 supports up to 176 devices."),
         ("What colour is the Arc R7?", "Red.", "The Arc R7 is Slate Blue."),
         ("Which port does SSH use on the Arc R7?", "22.", "SSH listens on port 2222.")]  # fmt: skip
# (not "Where is Nimbus Labs based?": it paraphrases the frozen set's hq-t1, and curation drops it)


def test_a_crashed_cycle_resumes_where_it_stopped_and_the_cursor_moves_only_when_done(
    tiny_loop, traffic, registry, monkeypatch
):
    for q, a, fix in FIXES:
        traffic.rate(traffic.answer(q, a), "down", correction=fix)
    cfg = load_config(LoopConfig, tiny_loop)
    store = LoopStore("bot")

    import tuneloop.flows.cycle as retrain_module  # where the cycle looks `retrain` up

    real = retrain_module.retrain
    monkeypatch.setattr(
        retrain_module, "retrain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("power cut"))
    )
    with pytest.raises(RuntimeError, match="power cut"):
        Loop("bot", cfg).run_cycle()
    assert store.state()["stage"] == "retrain" and store.state()["cycle"] == 1
    assert store.cursor()["feedback_id"] == 0  # nothing consumed yet

    late = traffic.answer("What is the trial length of Shield+?", "A week.")
    traffic.rate(late, "down", correction="Shield+ has a 45-day free trial.")
    monkeypatch.setattr(retrain_module, "retrain", real)
    said: list[str] = []
    result = Loop("bot", cfg, say=said.append).run_cycle()

    assert said[0] == "resuming cycle 1 at 'retrain'"
    assert result.cycle == 1 and result.outcome == "promoted", result
    batch = json.loads((store.cycle_dir(1) / "batch.json").read_text())
    assert len(batch["interactions"]) == 3  # the batch collected before the crash, not the late one
    assert store.cursor()["feedback_id"] == 3
    assert [i.response_id for i in collect(cfg.collect, "bot", store.cursor()).interactions] == [late]
    prod = registry.version("bot@production")
    assert int(prod.version) == 2 and dict(prod.tags)["tuneloop.kind"] == "adapter"
    assert dict(prod.tags)["tuneloop.base"] == "bot/1"  # retrained on the registered base
    stages = [(d["stage"], d["decision"]) for d in store.decisions()]
    assert stages == [("collect", "collected"), ("curate", "curated"), ("retrain", "trained"), ("gate", "passed"),
                      ("gate", "registered"), ("cycle", "promoted")]  # fmt: skip
    gate = next(d for d in store.decisions() if d["decision"] == "passed")["numbers"]
    assert gate["production"]["frozen"]["n"] == 2 and "frozen_delta" in gate
    assert [(c["name"], c["role"], c["n"], c["status"]) for c in gate["checks"]] == [
        ("frozen", "improve", 2, "pass")
    ]
    pool = (store.root / "accepted-sft.jsonl").read_text().splitlines()
    assert len(pool) == 3  # promoted examples are old data for the next cycle

    out = CliRunner().invoke(app, ["loop", "status", "--model", "bot"])
    assert out.exit_code == 0 and "promoted" in out.output and "frozen_delta" in out.output, out.output
    data = json.loads(CliRunner().invoke(app, ["loop", "status", "--model", "bot", "--json"]).output)
    assert data["state"]["outcome"] == "promoted" and len(data["decisions"]) == 6


def test_no_new_feedback_starts_no_cycle(tiny_loop):
    result = Loop("bot", load_config(LoopConfig, tiny_loop)).run_cycle()
    assert result.outcome == "nothing_new" and LoopStore("bot").state()["cycle"] == 0


def test_approval_queue_holds_the_cycle_until_reviewed(tiny_loop, traffic, registry):
    for q, a, fix in FIXES:
        traffic.rate(traffic.answer(q, a), "down", correction=fix)
    cfg = load_config(LoopConfig, tiny_loop, ["curate.approval.required=true"])
    first = Loop("bot", cfg).run_cycle()
    assert first.outcome == "waiting_for_review" and "3 of 3" in first.detail
    runner = CliRunner()
    listed = runner.invoke(app, ["feedback", "review", "--model", "bot", "--list"])
    assert listed.exit_code == 0 and "Slate Blue" in listed.output
    from tuneloop.interactions.review import ReviewQueue

    ids = [i.id for i in ReviewQueue().list("bot", "pending")]
    out = runner.invoke(app, ["feedback", "review", "--model", "bot", "--reject-all", "--ids", str(ids[0]),
                              "--reason", "unsure"])  # fmt: skip
    assert out.exit_code == 0 and "rejected 1" in out.output
    assert Loop("bot", cfg).run_cycle().outcome == "waiting_for_review"
    # interactive: edit the first, approve the rest
    out = runner.invoke(app, ["feedback", "review", "--model", "bot", "--reviewer", "ann"],
                        input="e\nThe Arc R7 is sold in Slate Blue only.\nA\n")  # fmt: skip
    assert out.exit_code == 0 and "2 approved" in out.output, out.output
    result = Loop("bot", cfg).run_cycle()
    assert result.outcome == "promoted"
    m = json.loads((LoopStore("bot").cycle_dir(1) / "data" / "manifest.json").read_text())
    assert m["rejections"] == {"rejected_by_reviewer": 1} and m["counts"]["approved"] == 2
    train = (LoopStore("bot").cycle_dir(1) / "data" / "sft" / "train.jsonl").read_text()
    assert "Slate Blue only" in train


@pytest.mark.parametrize("objectives", [["dpo"], ["sft", "dpo"]])
def test_dpo_and_sft_then_dpo_train_from_the_feedback_pairs(tiny_loop, traffic, registry, objectives):
    for q, a, fix in FIXES:
        traffic.rate(traffic.answer(q, a), "down", correction=fix)
    cfg = load_config(LoopConfig, tiny_loop, [f"retrain.objectives={objectives}"])
    result = Loop("bot", cfg).run_cycle()
    assert result.outcome == "promoted", result
    trained = next(d for d in LoopStore("bot").decisions() if d["stage"] == "retrain")["numbers"]
    assert [r.rsplit("/", 1)[-1] for r in trained["runs"]] == [f"run-{o}" for o in objectives]
    pairs = (LoopStore("bot").cycle_dir(1) / "data" / "dpo" / "train.jsonl").read_text().splitlines()
    assert len(pairs) == 3 and json.loads(pairs[0])["rejected"] == FIXES[0][1]
    run = json.loads((LoopStore("bot").cycle_dir(1) / f"run-{objectives[-1]}" / "run.json").read_text())
    assert run["objective"] == "dpo"
    if objectives == ["sft", "dpo"]:  # DPO ran on the merged SFT model, which is now a registered base
        assert run["base_model"]["reference"].endswith("merged-sft")
        assert dict(registry.version("bot@production").tags)["tuneloop.base"] != "bot/1"


def test_cli_loop_run_once_with_nothing_new(tiny_loop, tmp_path):
    import yaml

    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump(tiny_loop))
    out = CliRunner().invoke(app, ["loop", "run", "--model", "bot", "--config", str(cfg)])
    assert out.exit_code == 0 and "nothing_new" in out.output, out.output
