"""The console end to end in headless Chromium against a real gateway on 127.0.0.1.

Tiny random Llama versions in a real MLflow registry (bot/1, and bot/2 = a LoRA on it), served as
`prod` (bot@production) and `cand` (bot@candidate); a real feedback loop over the gateway's log and
database. Screenshots of every page go to the test's tmp dir and to .artifacts/console/.
"""

from __future__ import annotations

import json
from pathlib import Path

from serve.conftest import run_server
from serve.test_lora import make_adapter
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def _login(page, url: str, secret: str) -> None:
    page.goto(f"{url}/console")
    page.get_by_label("API key").fill(secret)
    page.get_by_label("API key").press("Enter")  # keyboard only
    page.wait_for_selector("#nav:not([hidden])")


def _no_injected_markup(page) -> None:
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('main img, main script, main iframe').length") == 0


def _every_field_has_a_label(page) -> None:
    unlabeled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.offsetParent !== null && !e.labels.length && !e.getAttribute('aria-label'))
        .map(e => e.id || e.outerHTML.slice(0, 60))""")
    assert unlabeled == []


def _loop_config(tmp_path: Path):
    from tuneloop.loop import LoopConfig

    frozen = tmp_path / "frozen.jsonl"
    frozen.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}], "answer": "a"}) + "\n")
    return LoopConfig.model_validate({
        "collect": {"served_name": "prod"},
        "curate": {"holdout_fraction": 0.0, "approval": {"required": True}},
        "retrain": {"min_new_examples": 1000},  # stop after the dataset is built: no training here
        "gate": {"frozen_eval": str(frozen), "min_examples": 1},  # one frozen question: the gate never runs here
    })  # fmt: skip


def test_console_chat_streams_votes_reach_the_loop_review_approves_and_rollback_moves_the_alias(
    registry, tiny_llama, tmp_path, keys, browser, shots
):
    from tuneloop.flows.cycle import Loop
    from tuneloop.interactions.feedback import FeedbackStore
    from tuneloop.interactions.requestlog import default_path, read

    registry.register_folder(tiny_llama, "bot", description=f"base {HOSTILE}")
    registry.register_folder(make_adapter(tiny_llama, tmp_path / "adapter", seed=3), "bot")
    registry.promote("bot", 1, "production")
    registry.promote("bot", 2, "production")
    registry.promote("bot", 1, "candidate")
    cfg = ServeConfig.model_validate({
        "models": [{"name": "prod", "model": "bot@production", "kv_cache_gib": 0.02},
                   {"name": "cand", "model": "bot@candidate", "kv_cache_gib": 0.02}],
        "routes": [{"name": "bot", "variants": [{"model": "prod", "weight": 9}, {"model": "cand", "weight": 1}]}],
    })  # fmt: skip
    with run_server(cfg) as s:
        page = browser.new_page()
        _login(page, s.url, keys["secret"])
        assert keys["secret"] not in page.url

        # -- a chat streams (SSE): the answer grows in several steps, and the log has the streamed form
        page.select_option("#pg-model-a", "prod")
        page.get_by_text("Sampling").click()
        page.fill("#pg-temperature", "0")
        page.fill("#pg-max-tokens", "12")
        page.evaluate("""window.__updates = 0; new MutationObserver((records) => { window.__updates += records.length; })
            .observe(document.getElementById('pg-single'), {subtree: true, childList: true, characterData: true})""")
        page.fill("#pg-prompt", HOSTILE)
        page.press("#pg-prompt", "Control+Enter")
        page.wait_for_selector("#pg-single .msg.assistant:not([aria-busy]) .meta:has-text('response')")
        assert page.text_content("#pg-single .msg.user .text") == HOSTILE  # shown as text
        _no_injected_markup(page)
        assert page.evaluate("window.__updates") >= 4
        shown = page.text_content("#pg-single .msg.assistant .text")
        logged = [r for r in read(default_path()) if r["model"] == "prod"][-1]
        assert logged["request"]["stream"] is True and logged["response"]["choices"][0]["text"] == shown != ""
        assert "bot/2" in page.text_content("#pg-single .msg.assistant .meta")
        shots(page, "playground")

        # -- side by side: one prompt, two versions; B (cand) is better -> feedback + a preference pair
        page.check("input[name=mode][value=compare]")
        page.select_option("#pg-model-a", "prod")
        page.select_option("#pg-model-b", "cand")
        page.fill("#pg-system", "Answer briefly.")
        page.fill("#pg-prompt", "Which plan includes priority support?")
        page.click("#pg-send")
        page.wait_for_selector("#pg-vote:not([hidden])")
        answers = [page.text_content(f"#{c} .msg.assistant .text") for c in ("pg-a", "pg-b")]
        assert answers[0] != answers[1]
        shots(page, "side-by-side")
        page.fill("#pg-vote-comment", "B is more helpful")
        page.click("#pg-vote-b")
        page.wait_for_selector("#pg-status:has-text('Vote stored')")
        rows = FeedbackStore().list()
        assert [(r.rating, r.correction) for r in rows] == [(5, None), (1, answers[1])]

        # -- the loop collects the vote, curates it and waits for a reviewer
        loop = Loop("bot", _loop_config(tmp_path))
        assert loop.run_cycle().outcome == "waiting_for_review"
        page.click("#nav a[data-page=review]")
        card = page.locator("#rv-items article.card").first
        card.wait_for()
        assert card.locator(".rv-answer").text_content() == answers[1].strip()  # corrections are stripped
        assert "automatic checks" in card.text_content() and "agreement" in card.text_content()
        shots(page, "review")
        card.get_by_role("button", name="Edit").click()
        card.get_by_label("Answer to train on").fill("Priority support comes with the Pro plan.")
        card.get_by_role("button", name="Approve edited").click()
        card.locator("[role=status]:has-text('approved')").wait_for()
        result = loop.run_cycle()
        assert result.outcome == "not_enough_data"  # the dataset is built; training is not this test's job
        [pair] = [
            json.loads(x)
            for x in (loop.store.cycle_dir(1) / "data" / "dpo" / "train.jsonl").read_text().splitlines()
        ]
        assert (
            pair["chosen"] == "Priority support comes with the Pro plan."
            and pair["rejected"].strip() == answers[0].strip()
        )
        assert pair["prompt"][-1]["content"] == "Which plan includes priority support?"

        # -- models: lineage, history; a rollback with confirmation moves the alias and reloads the gateway
        page.click("#nav a[data-page=models]")
        page.get_by_role("button", name="Open bot").click()
        page.wait_for_selector("#md-versions")
        assert f"base {HOSTILE}" in page.text_content("#md-list")
        _no_injected_markup(page)
        page.click("#md-rollback")
        page.wait_for_selector("#confirm[open]")
        assert "version 2 → version 1" in page.text_content("#confirm-text")
        shots(page, "models-confirm")
        page.click("#confirm-ok")
        page.wait_for_selector("#md-status:has-text('now points at version 1')")
        assert int(registry.version("bot@production").version) == 1
        assert s.gateway.models["prod"].version == "bot/1"  # reloaded: prod follows the alias
        shots(page, "models")

        # -- live: traffic per variant and the loop's decisions
        page.click("#nav a[data-page=live]")
        page.wait_for_selector("#lv-variants td:has-text('prod')")
        page.wait_for_selector(
            "#lv-variants caption:has-text('Last')", timeout=15_000
        )  # the next refresh: rates
        qps = page.locator("#lv-variants tbody tr:has(td:text-is('prod')) td").nth(2).text_content()
        assert float(qps) >= 0
        page.wait_for_selector("#lv-loops caption:has-text('bot')")
        assert "waiting" not in page.text_content(
            "#lv-loops caption"
        ) and "not_enough_data" in page.text_content("#lv-loops")
        _every_field_has_a_label(page)
        shots(page, "live")


def test_hostile_text_shows_as_text_on_every_page_and_the_console_fits_a_narrow_screen(
    keys, browser, shots, registry
):
    from tuneloop.interactions.loopstore import LoopStore
    from tuneloop.interactions.review import ReviewQueue

    ReviewQueue().enqueue("evil", 1, [{"response_id": "r1", "source": "correction", "chosen": HOSTILE,
                                        "rejected": HOSTILE, "prompt": [{"role": "user", "content": HOSTILE}]}])  # fmt: skip
    LoopStore("evil").decide(1, "collect", HOSTILE, HOSTILE, note=HOSTILE)
    cfg = ServeConfig.model_validate({"warmup": False, "models": [{"name": HOSTILE[:20], "model": "unused"}]})
    with run_server(cfg, {HOSTILE[:20]: FakeClient(), "fake": FakeClient()}) as s:
        page = browser.new_page()
        page.set_viewport_size({"width": 375, "height": 740})
        _login(page, s.url, keys["secret"])
        assert page.locator("#pg-model-a option").first.text_content() == HOSTILE[:20]
        page.select_option("#pg-model-a", "fake")
        page.fill("#pg-prompt", HOSTILE)
        page.click("#pg-send")
        page.wait_for_selector("#pg-single .msg.assistant:not([aria-busy]) .meta:has-text('response')")
        assert page.text_content("#pg-single .msg.assistant .text") == HOSTILE  # the fake echoes it back
        for name in ("playground", "review", "models", "live"):
            page.click(f"#nav a[data-page={name}]")
            if name == "review":
                page.wait_for_selector("#rv-items article.card")
                assert page.locator("#rv-items .rv-answer").text_content() == HOSTILE
            if name == "live":
                page.wait_for_selector("#lv-loops caption:has-text('evil')")
                assert HOSTILE in page.text_content("#lv-loops")
            page.wait_for_timeout(300)
            _no_injected_markup(page)
            _every_field_has_a_label(page)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
            shots(page, f"narrow-{name}")
        assert page.evaluate("sessionStorage.length") == 1 and page.evaluate("localStorage.length") == 0
        page.click("#logout")
        assert page.evaluate("sessionStorage.length") == 0 and page.is_visible("#login")
        wrong = browser.new_page()
        wrong.goto(f"{s.url}/console")
        wrong.fill("#login-key", "tl-not-a-key")
        wrong.click("#login-form button")
        wrong.wait_for_selector("#login-error:has-text('401')")
        assert wrong.is_hidden("#nav")
