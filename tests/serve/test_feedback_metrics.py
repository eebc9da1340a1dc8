"""OpenAI `metadata` tags, the rater of feedback, and the metrics scraped after real requests: feedback
by model/variant/rating, the feedback score histogram, the gateway gate's gauges, refusals by model."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuneloop.interactions.feedback import Answered, RecentResponses
from tuneloop.interactions.requestlog import read
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore


def ab_config(**kw) -> ServeConfig:
    limits = kw.pop("model_limits", {})
    models = [{"name": n, "model": "unused", **limits} for n in ("a", "b")]
    routes = [{"name": "ab", "variants": [{"model": "a"}, {"model": "b"}]}]
    return ServeConfig.model_validate({"models": models, "routes": routes, **kw})


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


# ------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": "v" for i in range(17)}, "at most 16 keys"),
        ({"k" * 65: "v"}, "1 to 64 characters"),
        ({"": "v"}, "1 to 64 characters"),
        ({"workload": "v" * 513}, "longer than 512 characters"),
        ({"workload": "a\x00b"}, "control character"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_bad_metadata_is_a_400_naming_the_field(serve, route, metadata, says):
    body = {"model": "a", "metadata": metadata}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"}
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        r = httpx.post(s.url + route, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "metadata" and says in error["message"] and "metadata" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_metadata_values_must_be_strings(serve):
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "a", "prompt": "x", "metadata": {"n": 3}})
        listed = httpx.post(s.url + "/v1/completions", json={"model": "a", "prompt": "x", "metadata": ["x"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.n", r.text
    assert listed.status_code == 400 and listed.json()["error"]["param"] == "metadata", listed.text


def test_metadata_and_user_are_in_the_request_log(serve, tuneloop_home):
    tags = {f"k{i}": "v" * 512 for i in range(15)} | {"workload": "support"}  # at the limits: accepted
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "metadata": tags, "user": "u7"}
        assert httpx.post(s.url + "/v1/chat/completions", json=chat).status_code == 200
        assert httpx.post(s.url + "/v1/completions", json={"model": "a", "prompt": "x"}).status_code == 200
    tagged, plain = read(tuneloop_home / "serve" / "requests.jsonl")
    assert tagged["metadata"] == tags and tagged["request"]["metadata"] == tags
    # the end user as a keyed pseudonym (log.pseudonymize_users), in the record and in the request
    assert tagged["user"] == tagged["request"]["user"] == s.gateway.privacy.user("u7") != "u7"
    assert plain["metadata"] is None and plain["user"] is None


# ------------------------------------------------------------------ feedback: rater and metrics


def test_feedback_metrics_by_variant_and_the_rater(serve, tuneloop_home):
    key, record = KeyStore().create("app")
    auth = {"Authorization": f"Bearer {key}"}
    with serve(ab_config(), {"a": FakeClient(), "b": FakeClient()}) as s:
        answers: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}  # variant -> (response id, user)
        for i in range(24):
            r = httpx.post(s.url + "/v1/chat/completions", headers=auth, json={
                "model": "ab", "messages": [{"role": "user", "content": f"q{i}"}], "user": f"user-{i}"})  # fmt: skip
            assert r.status_code == 200, r.text
            answers[r.headers["x-tuneloop-variant"]].append((r.json()["id"], f"user-{i}"))
        assert answers["a"] and answers["b"]
        (a1, a1_user), (b1, b1_user), (b2, b2_user) = answers["a"][0], answers["b"][0], answers["b"][-1]

        def rate(response_id: str, **body) -> dict:
            r = httpx.post(s.url + "/v1/feedback", headers=auth, json={"response_id": response_id, **body})
            assert r.status_code == 200, r.text
            return r.json()

        # the rater: as given, else the rated request's user (as pseudonyms), else the key id
        pseudonym = s.gateway.privacy.user
        assert rate(a1, rating="up", user="carol")["user"] == pseudonym("carol")
        assert rate(a1, rating=4)["user"] == pseudonym(a1_user)
        assert rate(b1, rating="down")["user"] == pseudonym(b1_user)
        assert rate(b2, rating=2)["user"] == pseudonym(b2_user)
        never = httpx.post(
            s.url + "/v1/feedback", headers=auth, json={"response_id": "chatcmpl-x", "rating": 5}
        )
        assert never.status_code == 404 and never.json()["error"]["code"] == "response_not_found"
        found = samples(s.url)
    stored = {(f.response_id, f.rating, f.user) for f in s.gateway.feedback.list()}
    assert (a1, 5, pseudonym("carol")) in stored and (a1, 4, pseudonym(a1_user)) in stored
    assert len(stored) == 4 and all(f.key_id == record.id for f in s.gateway.feedback.list())
    assert value(found, "tuneloop_feedback_total", model_name="ab", variant="a", rating="up") == 1
    assert value(found, "tuneloop_feedback_total", model_name="ab", variant="a", rating="4") == 1
    assert value(found, "tuneloop_feedback_total", model_name="ab", variant="b", rating="down") == 1
    assert value(found, "tuneloop_feedback_total", model_name="ab", variant="b", rating="2") == 1
    assert (
        value(found, "tuneloop_feedback_total", model_name="unknown", variant="unknown", rating="up") is None
    )
    # score histogram: a = 5 + 4, b = 1 + 2 (mean 4.5 against 1.5)
    assert value(found, "tuneloop_feedback_score_sum", model_name="ab", variant="a") == 9
    assert value(found, "tuneloop_feedback_score_count", model_name="ab", variant="a") == 2
    assert value(found, "tuneloop_feedback_score_sum", model_name="ab", variant="b") == 3
    assert value(found, "tuneloop_feedback_score_count", model_name="ab", variant="b") == 2
    buckets = {le: value(found, "tuneloop_feedback_score_bucket", model_name="ab", variant="b", le=le)
               for le in ("1.0", "2.0", "3.0", "4.0", "5.0", "+Inf")}  # fmt: skip
    assert buckets == {"1.0": 1, "2.0": 2, "3.0": 2, "4.0": 2, "5.0": 2, "+Inf": 2}


@pytest.mark.parametrize("where", ["database", "request log"])
def test_feedback_on_an_answer_no_longer_in_memory_is_labelled_from_the_database_or_log(serve, where):
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        engine = s.gateway.feedback.engine if where == "database" else None  # None: as before the table
        s.gateway.recent_responses = RecentResponses(1, engine, s.gateway.privacy)
        first = httpx.post(s.url + "/v1/completions", json={"model": "a", "prompt": "one", "user": "dan"})
        httpx.post(s.url + "/v1/completions", json={"model": "b", "prompt": "two"})
        assert len(s.gateway.recent_responses) == 1  # the bound holds: the first answer was evicted
        s.gateway.recent_responses.flush()
        s.gateway.request_log.flush()
        r = httpx.post(s.url + "/v1/feedback", json={"response_id": first.json()["id"], "rating": 3})
        assert r.status_code == 200 and r.json()["user"] == s.gateway.privacy.user("dan")
        found = samples(s.url)
    assert value(found, "tuneloop_feedback_score_sum", model_name="a", variant="default") == 3
    assert value(found, "tuneloop_feedback_total", model_name="a", variant="default", rating="3") == 1


def test_recent_responses_are_bounded():
    recent = RecentResponses(max_entries=3)
    for i in range(10):
        recent.add(f"r{i}", "m", "v", "u" * 1000)
    assert len(recent) == 3 and recent.get("r6") is None
    assert recent.get("r9") == Answered("m", "v", "u" * 256, None)  # the user id is cut to 256 characters


@pytest.mark.parametrize(
    ("body", "param"),
    [({"user": ""}, "user"), ({"user": "x" * 257}, "user"), ({"user": 5}, "user"), ({"rating": 6}, "rating")],
)
def test_bad_feedback_is_a_400_naming_the_field(serve, body, param):
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/feedback", json={"response_id": "x", "rating": "up", **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_feedback_user_with_a_control_character_is_400(serve):
    with serve(ab_config(auth={"enabled": False}), {"a": FakeClient(), "b": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/feedback", json={"response_id": "x", "rating": "up", "user": "a\x07b"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_character"
        assert s.gateway.feedback.list() == []


# ------------------------------------------------------------------ the gateway's gate


def test_gate_gauges_and_refusals_by_model(serve):
    cfg = ab_config(auth={"enabled": False}, model_limits={"max_concurrency": 1, "max_queue": 2})
    with serve(cfg, {"a": FakeClient(delay_s=0.4), "b": FakeClient()}) as s:
        idle = samples(s.url)
        for model in ("a", "b"):
            assert value(idle, "tuneloop_gateway_max_concurrency", model_name=model) == 1
            assert value(idle, "tuneloop_gateway_max_queue", model_name=model) == 2
            assert value(idle, "tuneloop_gateway_requests_running", model_name=model) == 0
            assert value(idle, "tuneloop_gateway_requests_waiting", model_name=model) == 0

        async def load() -> tuple[list[int], dict]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                body = {"model": "a", "prompt": "w w w", "max_tokens": 3}  # 1.2 s each, one at a time
                sent = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(3)]
                deadline = time.monotonic() + 10
                while True:  # all three admitted: one running, two queued
                    now = await asyncio.to_thread(samples, s.url)
                    if value(now, "tuneloop_gateway_requests_waiting", model_name="a") == 2:
                        break
                    assert time.monotonic() < deadline, "the queue never filled"
                    await asyncio.sleep(0.02)
                refused = await c.post("/v1/completions", json=body)  # beyond the queue: 429
                return [refused.status_code, *[(await t).status_code for t in sent]], now

        codes, busy = asyncio.run(load())
        assert codes == [429, 200, 200, 200]
        assert value(busy, "tuneloop_gateway_requests_running", model_name="a") == 1
        assert value(busy, "tuneloop_gateway_requests_waiting", model_name="b") == 0
        after = samples(s.url)
    assert value(after, "tuneloop_gateway_requests_running", model_name="a") == 0
    assert value(after, "tuneloop_gateway_requests_waiting", model_name="a") == 0
    assert value(after, "tuneloop_rejected_requests_total", model_name="a", reason="overloaded") == 1
    assert value(after, "tuneloop_rejected_requests_total", model_name="b", reason="overloaded") is None
