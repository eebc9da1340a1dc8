"""The console's loop view shows a gate's and a canary's numbers: one line per check with its interval,
counts and verdict (real gateway, real Chromium), from decisions the gate and canary rules made."""

from __future__ import annotations

import json

from serve.conftest import run_server
from tuneloop.loop.canary import VariantStats, judge
from tuneloop.loop.config import CanarySettings
from tuneloop.loop.gate import Criterion, decide
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

from .test_browser import _login


def test_the_loop_view_shows_each_check_with_its_interval_and_verdict(keys, browser, shots):
    from tuneloop.interactions.loopstore import LoopStore

    prod = [1.0] * 40 + [0.0] * 30 + [1.0] * 5 + [0.0] * 25
    cand = [1.0] * 40 + [1.0] * 30 + [0.0] * 5 + [0.0] * 25
    gate = decide([Criterion("feedback", "contains_answer", prod, cand, "improve", 0.0, min_examples=30)])
    verdict = judge(VariantStats(900, 0, [0.2] * 900, 900, 540), VariantStats(300, 0, [0.2] * 300, 300, 240),
                    CanarySettings(production_model="p", candidate_model="c", window="1s"), elapsed_s=60)  # fmt: skip
    assert gate.passed and verdict.action == "promote"
    store = LoopStore("bot")
    store.save_state({"cycle": 1, "stage": "done", "outcome": "promoted", "results": {}})
    store.decide(1, "gate", gate.outcome, gate.reason, **json.loads(json.dumps(gate.numbers())))
    store.decide(1, "canary", verdict.action, verdict.reason, elapsed_s=60.0, **verdict.numbers())
    with run_server(ServeConfig.model_validate({"warmup": False}), {"fake": FakeClient()}) as s:
        page = browser.new_page()
        _login(page, s.url, keys["secret"])
        page.click("#nav a[data-page=live]")
        page.wait_for_selector("#lv-loops .check")
        lines = page.locator("#lv-loops .check").all_text_contents()
        shots(page, "loop-decisions")
    low, high = gate.checks[0].interval.low, gate.checks[0].interval.high
    assert f"feedback contains_answer +0.250 [+{low:.3f}, +{high:.3f}] n=100 pass" in lines, lines
    thumbs = next(x for x in lines if x.startswith("thumbs_up "))
    assert thumbs.startswith("thumbs_up 0.800 vs 0.600 [") and thumbs.endswith("n=300/900 pass"), thumbs
    assert (
        any(x.startswith("latency_p95 ") for x in lines)
        and page.locator("#lv-loops .check.fail").count() == 0
    )
