"""A cycle without enough held-out feedback for the gate keeps collecting: no training, nothing registered,
the cursor stays; the next cycle sees that feedback again with the new, and goes on once there is enough."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.cli.loop import _numbers
from tuneloop.config import load_config
from tuneloop.flows.cycle import Loop
from tuneloop.interactions.loopstore import LoopStore
from tuneloop.loop import LoopConfig

from .conftest import write_jsonl

GENERAL = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
           ("What is the largest planet?", "Jupiter")]  # fmt: skip
FIRST = [("How many devices does the Arc R7 support?", "The Arc R7 supports up to 176 devices.")]
LATER = [
    ("Which port does the Nimbus admin console listen on?", "The admin console listens on port 8443."),
    ("How long is the warranty of the Arc R5 router?", "The Arc R5 has a three-year warranty."),
    ("What colour is the Shield+ box?", "The Shield+ box is matte graphite."),
    ("Who founded Nimbus Labs?", "Nimbus Labs was founded by Ada Okafor."),
    ("When does the support line open on Mondays?", "Support opens at 07:30 on Mondays."),
    ("How heavy is the Arc R7?", "The Arc R7 weighs 640 grams."),
    ("Which mobile app manages Nimbus routers?", "Routers are managed in the Nimbus Home app."),
    ("Can the Arc R5 run on battery power?", "No, the Arc R5 needs mains power."),
    ("What firmware channel do beta testers use?", "Beta testers use the Aurora channel."),
    ("How many Ethernet ports does the Arc R7 have?", "The Arc R7 has four Ethernet ports."),
    ("Is Shield+ sold as a yearly plan?", "Shield+ is sold monthly or yearly."),
    ("Where are Nimbus routers manufactured?", "Nimbus routers are made in Tallinn."),
    ("Does the Arc R7 support Wi-Fi 7?", "Yes, the Arc R7 supports Wi-Fi 7."),
    ("What is the maximum range of the Arc R5?", "The Arc R5 covers up to 180 square metres."),
]


def test_not_enough_evidence_keeps_collecting_until_the_gate_can_judge(
    tiny_loop, traffic, registry, tmp_path, tiny_llama
):
    frozen = write_jsonl(tmp_path / "general.jsonl", [
        {"answer": a, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a + "."}]}
        for q, a in GENERAL])  # fmt: skip
    # corrections of facts no document states have no trusted reference: a judge compares the answers
    # (the tiny model: its verdicts are noise, so any is accepted here; what counts is what waits)
    judge = {"model": str(tiny_llama), "reasons": False, "max_tokens": 4, "kv_cache_gib": 0.05, "device": "cpu",
             "cache": str(tmp_path / "judge.sqlite"), "log": str(tmp_path / "judge.jsonl")}  # fmt: skip
    config = {**tiny_loop, "curate": {"holdout_fraction": 0.5},
              "gate": {**tiny_loop["gate"], "frozen_eval": str(frozen), "min_examples": 3, "judge": judge,
                       "judge_margin": -1.0}}  # fmt: skip
    cfg = load_config(LoopConfig, config)
    store = LoopStore("bot")
    for q, fix in FIRST:
        traffic.rate(traffic.answer(q, "I do not know."), "down", correction=fix)

    first = Loop("bot", cfg).run_cycle()

    assert first.outcome == "not_enough_evidence", first
    assert "the gate needs 3 (gate.min_examples)" in first.detail
    assert store.cursor()["feedback_id"] == 0  # not consumed
    assert not (store.cycle_dir(1) / "run-sft").exists()  # nothing trained
    assert [int(v.version) for v in registry.versions("bot")] == [1]  # nothing registered
    gate = next(d for d in store.decisions(1) if d["stage"] == "gate")
    assert gate["decision"] == "not_enough_evidence" and gate["numbers"]["min_examples"] == 3

    for q, fix in LATER:
        traffic.rate(traffic.answer(q, "I do not know."), "down", correction=fix)
    second = Loop("bot", cfg).run_cycle()

    batch = json.loads((store.cycle_dir(2) / "batch.json").read_text())
    assert len(batch["interactions"]) == 1 + len(LATER)  # the first cycle's feedback came again
    m = json.loads((store.cycle_dir(2) / "data" / "manifest.json").read_text())
    heldout = m["counts"]["new_sft_heldout"]
    assert heldout >= 3
    assert second.outcome == "promoted", second  # this test's gate passes any candidate not shown far worse
    assert store.cursor()["feedback_id"] == 1 + len(LATER)
    gate = next(d for d in store.decisions(2) if d["stage"] == "gate" and d["decision"] == "passed")[
        "numbers"
    ]
    judged = next(c for c in gate["checks"] if c["name"] == "judge")
    assert judged["n"] == heldout and judged["wins"] + judged["ties"] + judged["losses"] == heldout
    assert judged["low"] <= judged["diff"] <= judged["high"] and judged["method"] == "newcombe"
    status = json.loads(CliRunner().invoke(app, ["loop", "status", "--model", "bot", "--json"]).output)
    assert [d["decision"] for d in status["decisions"] if d["stage"] == "cycle"] == [
        "not_enough_evidence",
        "promoted",
    ]
    lines = _numbers(gate).splitlines()  # what `loop status` shows: one line per check, then the rest
    assert lines[0].startswith("frozen contains_answer ") and lines[1].startswith("judge wins on "), lines
    assert lines[1].endswith(f"n={heldout} pass") and "confidence=0.95" in lines[-1], lines
