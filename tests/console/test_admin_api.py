"""The admin routes the console calls: auth (401/403), registry with confirmed alias moves, metrics
summary from the server's own Prometheus registry, loop status and checks, side-by-side votes."""

from __future__ import annotations

import json

import httpx
import pytest

from serve.conftest import run_server
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

ROUTES = [
    ("GET", "/admin/registry/models", None),
    ("GET", "/admin/registry/models/bot", None),
    ("GET", "/admin/registry/models/bot/versions/1", None),
    ("POST", "/admin/registry/models/bot/promote", {"version": 1, "alias": "production"}),
    ("POST", "/admin/registry/models/bot/rollback", {"alias": "production"}),
    ("GET", "/admin/metrics/summary", None),
    ("GET", "/admin/gateway", None),
    ("GET", "/admin/loop", None),
    ("GET", "/admin/loop/bot", None),
    ("GET", "/admin/loop/bot/cycles/1/checks", None),
    ("POST", "/admin/preferences", {"chosen": "a", "rejected": "b"}),
    ("GET", "/admin/feedback", None),
]


def _config(**extra) -> ServeConfig:
    return ServeConfig.model_validate({"warmup": False, **extra})


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_console_route_is_401_without_a_key_and_403_without_the_admin_scope(keys, method, path, body):
    with run_server(_config(), {"fake": FakeClient()}) as s:
        anonymous = httpx.request(method, s.url + path, json=body)
        user = httpx.request(method, s.url + path, json=body, headers=keys["user"])
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "missing_api_key"
    assert user.status_code == 403 and user.json()["error"]["code"] == "insufficient_scope"


def test_the_console_page_is_static_with_a_strict_content_security_policy():
    with run_server(_config(), {"fake": FakeClient()}) as s:
        page = httpx.get(f"{s.url}/console")
        script = httpx.get(f"{s.url}/console/static/console.js")
        css = httpx.get(f"{s.url}/console/static/console.css")
        missing = [
            httpx.get(f"{s.url}/console/static/{n}").status_code for n in ("nope.js", "..%2Fapp.py", ".x.js")
        ]
        slash = httpx.get(f"{s.url}/console/", follow_redirects=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert script.headers["content-type"].startswith("text/javascript") and css.status_code == 200
    assert missing == [404, 404, 404] and slash.status_code == 308
    # user text only ever goes in with textContent / text nodes; no third-party URLs (no internet)
    for banned in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "http://",
        "https://",
    ):
        assert banned not in script.text, banned
    assert "http" not in page.text.replace("http-equiv", "")


def test_registry_routes_list_show_and_move_aliases_only_when_confirmed(registry, tiny_llama, keys):
    registry.register_folder(tiny_llama, "bot", description="<img src=x onerror=alert(1)>")
    registry.register_folder(tiny_llama, "bot")
    registry.promote("bot", 1, "production")
    admin = keys["admin"]
    with run_server(_config(), {"fake": FakeClient()}) as s:
        url = f"{s.url}/admin/registry/models"
        listed = httpx.get(url, headers=admin).json()["data"]
        shown = httpx.get(f"{url}/bot", headers=admin).json()
        version = httpx.get(f"{url}/bot/versions/1", headers=admin).json()
        missing = httpx.get(f"{url}/nobody", headers=admin)
        preview = httpx.post(f"{url}/bot/promote", json={"version": 2}, headers=admin, timeout=30)
        assert preview.status_code == 409 and int(registry.version("bot@production").version) == 1
        token = preview.json()["confirm"]["confirm_token"]
        wrong = httpx.post(
            f"{url}/bot/promote", json={"version": 2, "confirm_token": "0" * 64}, headers=admin
        )
        other = httpx.post(f"{url}/bot/promote", json={"version": 2, "alias": "staging", "confirm_token": token},
                           headers=admin)  # fmt: skip
        done = httpx.post(f"{url}/bot/promote", json={"version": 2, "confirm_token": token}, headers=admin)
        stale = httpx.post(f"{url}/bot/promote", json={"version": 2, "confirm_token": token}, headers=admin)
        back = httpx.post(f"{url}/bot/rollback", json={"alias": "production"}, headers=admin)
        rolled = httpx.post(
            f"{url}/bot/rollback", json={"alias": "production", "confirm": True}, headers=admin
        )
        nothing = httpx.post(f"{url}/bot/rollback", json={"alias": "staging", "confirm": True}, headers=admin)
        bad_alias = httpx.post(f"{url}/bot/rollback", json={"alias": "v1", "confirm": True}, headers=admin)
        unknown = httpx.post(f"{url}/bot/promote", json={"version": 9, "confirm": True}, headers=admin)
        history = httpx.get(f"{url}/bot", headers=admin).json()["history"]
    assert listed[0]["name"] == "bot" and listed[0]["aliases"] == {"production": 1}
    assert [v["version"] for v in shown["versions"]] == [2, 1]  # newest first
    assert (
        shown["versions"][1]["lineage"]["kind"] == "model"
        and "weights_sha256" in shown["versions"][1]["lineage"]
    )
    assert version["ref"] == "bot/1" and version["description"].startswith("<img")  # stored verbatim
    assert missing.status_code == 404
    assert preview.json()["confirm"] | {"confirm_token": None} == {"action": "promote", "name": "bot",
        "alias": "production", "from": 1, "to": 2, "confirm_token": None}  # fmt: skip
    assert wrong.status_code == 409 and other.status_code == 409  # a token confirms one move only
    assert done.status_code == 200 and done.json()["done"] and done.json()["to"] == 2
    assert stale.status_code == 409 and "moved since" in stale.json()["error"]["message"]  # token used up
    assert back.status_code == 409 and back.json()["confirm"]["to"] == 1
    assert rolled.json()["from"] == 2 and rolled.json()["to"] == 1
    assert nothing.status_code == 400 and bad_alias.status_code == 400 and unknown.status_code == 404
    assert int(registry.version("bot@production").version) == 1
    assert [(e["action"], e["version"]) for e in history] == [("promote", 1), ("promote", 2), ("rollback", 1)]


def test_metrics_summary_gives_rates_percentiles_and_429s_per_model_and_variant(keys):
    cfg = _config(
        models=[{"name": n, "model": "unused"} for n in "ab"],
        routes=[{"name": "ab", "variants": [{"model": "a", "weight": 1}, {"model": "b", "weight": 0}]}],
    )
    body = {"model": "ab", "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 4}
    with run_server(cfg, {"a": FakeClient(), "b": FakeClient()}) as s:
        first = httpx.get(f"{s.url}/admin/metrics/summary", headers=keys["admin"]).json()
        for _ in range(5):
            assert (
                httpx.post(f"{s.url}/v1/chat/completions", json=body, headers=keys["user"]).status_code == 200
            )
        s.gateway.models["a"].gate.max_concurrency = 0  # full: the next request is refused with 429
        s.gateway.models["a"].gate.max_queue = 0
        assert httpx.post(f"{s.url}/v1/chat/completions", json=body, headers=keys["user"]).status_code == 429
        second = httpx.get(
            f"{s.url}/admin/metrics/summary", params={"window_s": 1}, headers=keys["admin"]
        ).json()
        gateway = httpx.get(f"{s.url}/admin/gateway", headers=keys["admin"]).json()
    assert first["window_s"] is None and first["variants"] == []
    row = next(v for v in second["variants"] if (v["model"], v["variant"]) == ("ab", "a"))
    assert (
        row["requests"] == 6 and row["rate_limited"] == 1 and row["rate_limited_rate"] == pytest.approx(1 / 6)
    )
    assert row["qps"] > 0 and row["generated_tokens"] == 20 and row["tokens_per_s"] > 0
    assert row["latency_s"]["count"] == 5 and 0 < row["latency_s"]["p50"] <= row["latency_s"]["p99"]
    assert row["ttft_s"]["p90"] is not None and row["error_rate"] == 0
    assert [e["model"] for e in second["engines"]] == ["a", "b"] and second["engines"][0]["running"] == 0
    assert second["rejected_total"]["overloaded"] == 1
    assert gateway["key"]["scopes"] == ["admin", "inference", "feedback"]
    assert gateway["routes"][0]["variants"][1] == {"model": "b", "weight": 0.0}


def test_quantile_matches_prometheus_histogram_quantile():
    from tuneloop.serve.routers.admin_metrics import quantile

    buckets = [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.75, buckets) == pytest.approx(0.75)
    assert quantile(0.25, buckets) == pytest.approx(0.3)
    assert quantile(0.9, [(1.0, 0.0), (float("inf"), 5.0)]) == 1.0  # open top bucket: the last bound
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_loop_routes_show_state_decisions_and_the_curation_checks(keys):
    from tuneloop.interactions.loopstore import LoopStore

    store = LoopStore("bot")
    store.save_state({"cycle": 1, "stage": "approve", "results": {}})
    store.decide(1, "collect", "collected", "<script>alert(1)</script>", answers=2)
    (store.cycle_dir(1) / "curated.json").write_text(json.dumps({
        "proposals": [{"response_id": "r1", "source": "correction", "raters": 1, "agreement": 1.0, "mean_rating": 1.0}],
        "rejected": [{"response_id": "r2", "reason": "pii"}, {"response_id": "r3", "reason": "prompt_injection"}],
        "pii": {"EMAIL": 1}}))  # fmt: skip
    admin = keys["admin"]
    with run_server(_config(), {"fake": FakeClient()}) as s:
        listed = httpx.get(f"{s.url}/admin/loop", headers=admin).json()["data"]
        status = httpx.get(f"{s.url}/admin/loop/bot", headers=admin).json()
        checks = httpx.get(f"{s.url}/admin/loop/bot/cycles/1/checks", headers=admin).json()
        codes = [httpx.get(f"{s.url}{p}", headers=admin).status_code
                 for p in ("/admin/loop/nobody", "/admin/loop/bot/cycles/2/checks", "/admin/loop/..%2Fx")]  # fmt: skip
    assert listed == [{"model": "bot", "cycle": 1, "stage": "approve", "outcome": None,
                       "last_decision": status["decisions"][0]}]  # fmt: skip
    assert status["decisions"][0]["reason"] == "<script>alert(1)</script>" and status["decisions_total"] == 1
    assert checks["proposals"]["r1"]["source"] == "correction"
    assert checks["rejections"] == {"pii": 1, "prompt_injection": 1} and checks["pii_redacted"] == {
        "EMAIL": 1
    }
    assert codes == [404, 404, 404]


def test_a_side_by_side_vote_is_two_feedback_rows_the_loop_turns_into_a_preference_pair(keys, tmp_path):
    from tuneloop.interactions.feedback import FeedbackStore
    from tuneloop.loop.collect import collect
    from tuneloop.loop.config import CollectSettings, CurateSettings
    from tuneloop.loop.curate import Known, curate

    messages = [{"role": "user", "content": "Which plan includes priority support?"}]
    with run_server(_config(), {"a": FakeClient(), "b": FakeClient()}) as s:

        def ask(model, content=None):
            msgs = [{"role": "user", "content": content}] if content else messages
            r = httpx.post(f"{s.url}/v1/chat/completions", headers=keys["user"],
                           json={"model": model, "messages": msgs, "max_tokens": 3 if model == "a" else 5})  # fmt: skip
            return r.json()["id"]

        a, b, other = ask("a"), ask("b"), ask("b", "Something else entirely?")
        url = f"{s.url}/admin/preferences"
        vote = httpx.post(url, json={"chosen": a, "rejected": b, "comment": "shorter"}, headers=keys["admin"])
        same = httpx.post(url, json={"chosen": a, "rejected": a}, headers=keys["admin"])
        unknown = httpx.post(url, json={"chosen": a, "rejected": "chatcmpl-nope"}, headers=keys["admin"])
        mismatch = httpx.post(url, json={"chosen": a, "rejected": other}, headers=keys["admin"])
        recent = httpx.get(f"{s.url}/admin/feedback", headers=keys["admin"]).json()["data"]
    assert vote.status_code == 200, vote.text
    assert vote.json()["pair"] == {
        "prompt": messages,
        "chosen": "Which plan includes",
        "rejected": "Which plan includes priority support?",
    }
    assert (same.status_code, unknown.status_code, mismatch.status_code) == (400, 404, 400)
    rows = {f.response_id: f for f in FeedbackStore().list()}
    assert rows[a].rating == 5 and rows[a].correction is None and "preferred over" in rows[a].comment
    assert (
        rows[b].rating == 1
        and rows[b].correction == "Which plan includes"
        and rows[b].comment.endswith("shorter")
    )
    assert [r["response_id"] for r in recent] == [b, a]
    # the loop of the served name that lost: a correction -> an SFT example and a DPO pair
    batch = collect(CollectSettings(served_name="b"), "bot", {"feedback_id": 0})
    curated = curate(batch, CurateSettings(), Known.from_rows([], 0.8))
    [proposal] = curated.proposals
    assert (proposal["chosen"], proposal["rejected"]) == (
        "Which plan includes",
        "Which plan includes priority support?",
    )
    assert proposal["prompt"] == messages and proposal["source"] == "correction"
