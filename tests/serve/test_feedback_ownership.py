"""Feedback belongs to whom the answer was given: a key rates only its own answers (admin keys any),
unknown ids are 404 in OpenAI's shape, and the answering key is known after a restart."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore


def config(**kw) -> ServeConfig:
    return ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused"}], **kw})


def ask(url: str, key: str, user: str | None = None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    extra = {"user": user} if user else {}
    return client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "how do I pair it"}], **extra
    ).id


def rate(url: str, key: str, response_id: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                      json={"response_id": response_id, "rating": "down", **body})  # fmt: skip


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    store = KeyStore()
    made = {name: store.create(name, scopes) for name, scopes in
            (("a", None), ("b", None), ("ops", ["admin", "feedback"]))}  # fmt: skip
    return {name: (secret, record.id) for name, (secret, record) in made.items()}


def test_a_key_rates_only_its_own_answers_and_admin_keys_any(serve, keys):
    (a, a_id), (b, _), (ops, ops_id) = keys["a"], keys["b"], keys["ops"]
    with serve(config(), {"fake": FakeClient()}) as s:
        answer = ask(s.url, a, user="alice")
        stolen = rate(s.url, b, answer, correction="Poisoned answer.")
        assert stolen.status_code == 404, stolen.text
        error = stolen.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == ("not_found_error", "response_not_found",
                                                                 "response_id")  # fmt: skip
        assert "the key that made the request" in error["message"]
        own = rate(s.url, a, answer)
        assert own.status_code == 200 and own.json()["user"] == s.gateway.privacy.user("alice")
        # an operator may rate anything, but as itself: never as the user who asked
        by_admin = rate(s.url, ops, answer, rating="up")
        assert by_admin.status_code == 200 and by_admin.json()["user"] == ops_id
    stored = [(f.key_id, f.rating) for f in s.gateway.feedback.list()]
    assert stored == [(a_id, 1), (ops_id, 5)]  # nothing of key b's


def test_unknown_response_ids_are_404_and_stored_nowhere(serve, keys):
    a, _ = keys["a"]
    with serve(config(), {"fake": FakeClient()}) as s:
        for rid in ("chatcmpl-never-answered", "cmpl-" + "0" * 32):
            r = rate(s.url, a, rid)
            assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found", r.text
        metrics = httpx.get(s.url + "/metrics").text
        assert s.gateway.feedback.list() == []
    assert 'model_name="unknown"' not in metrics  # no more feedback labelled "unknown"


@pytest.mark.parametrize("log_enabled", [True, False])
def test_the_answering_key_is_known_after_a_restart(serve, keys, log_enabled):
    """Without the request log too: the `responses` table, not the log's tail, answers."""
    (a, _), (b, _) = keys["a"], keys["b"]
    cfg = config(log={"enabled": log_enabled})
    with serve(cfg, {"fake": FakeClient()}) as s:
        answer = ask(s.url, a, user="alice")
    with serve(cfg, {"fake": FakeClient()}) as s:  # a new process would start just like this
        assert s.gateway.recent_responses.get(answer).key_id == keys["a"][1]
        assert rate(s.url, b, answer).status_code == 404
        r = rate(s.url, a, answer, rating=4)
        assert r.status_code == 200 and r.json()["user"] == s.gateway.privacy.user("alice")
        text = httpx.get(s.url + "/metrics").text
    found = {
        (x.name, frozenset(x.labels.items())): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
    }
    labels = frozenset({"model_name": "fake", "variant": "default"}.items())
    assert found[("tuneloop_feedback_score_sum", labels)] == 4  # labelled with what answered


def test_the_export_names_the_rating_key_and_the_asking_key(serve, keys):
    (a, a_id), (ops, ops_id) = keys["a"], keys["ops"]
    with serve(config(), {"fake": FakeClient()}) as s:
        answer = ask(s.url, a)
        assert rate(s.url, a, answer).status_code == 200
        assert rate(s.url, ops, answer, rating="up").status_code == 200
    out = CliRunner().invoke(app, ["feedback", "export"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["key_id"], r["request_key_id"]) for r in rows] == [(a_id, a_id), (ops_id, a_id)]


def test_an_answer_logged_before_the_upgrade_is_found_in_the_log_and_its_user_pseudonymized(
    serve, tuneloop_home
):
    """No `responses` row and a raw `user` in the log: the log's tail names the key, and the user is
    stored as its pseudonym like any other."""
    import time

    path = tuneloop_home / "serve" / "requests.jsonl"
    path.parent.mkdir(parents=True)
    line = {"time": time.time(), "response_id": "chatcmpl-old", "key_id": "anonymous", "model": "fake",
            "variant": "default", "status": 200, "user": "alice@example.com"}  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/feedback", json={"response_id": "chatcmpl-old", "rating": 5})
        assert r.status_code == 200, r.text
        assert r.json()["user"] == s.gateway.privacy.user("alice@example.com")
