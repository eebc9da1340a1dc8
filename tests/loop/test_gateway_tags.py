"""What the gateway records for the loop: OpenAI `metadata` tags select a workload in collect, and
feedback's `user` names the people behind one API key, who settle that key's one vote."""

from __future__ import annotations

import httpx
import openai

from serve.conftest import run_server
from tuneloop.interactions.records import Rating
from tuneloop.loop.collect import collect
from tuneloop.loop.config import CollectSettings
from tuneloop.loop.filters import Reject, Verdict, agree
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore


def _config() -> ServeConfig:
    return ServeConfig.model_validate({"models": [{"name": "bot", "model": "unused"}]})


def test_collect_selects_requests_by_their_metadata_workload_tag():
    key, _ = KeyStore().create("app")
    with run_server(_config(), {"bot": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        tagged = client.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "reset my router"}],
            metadata={"workload": "support", "team": "care"},
        )  # fmt: skip
        untagged = client.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "hello"}]
        )
        other = client.completions.create(
            model="bot", prompt="write a poem", extra_body={"metadata": {"workload": "marketing"}}
        )
        for answer in (tagged, untagged, other):
            r = httpx.post(s.url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                           json={"response_id": answer.id, "rating": "up"})  # fmt: skip
            assert r.status_code == 200, r.text
    batch = collect(CollectSettings(workload="support"), "bot", {})
    assert [i.response_id for i in batch.interactions] == [tagged.id]
    assert batch.interactions[0].workload == "support"
    assert batch.filtered == {"other_workload": 2}
    everything = collect(CollectSettings(), "bot", {})
    assert {i.response_id for i in everything.interactions} == {tagged.id, untagged.id, other.id}


def test_two_users_of_one_key_are_one_voter():
    key, record = KeyStore().create("app")
    with run_server(_config(), {"bot": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "how do I pair it"}], user="alice"
        )
        auth = {"Authorization": f"Bearer {key}"}
        # no user given: the request's user ("alice"); then "bob" names himself, on the same key
        for body in ({"rating": "down"}, {"rating": "down", "user": "bob"}):
            r = httpx.post(s.url + "/v1/feedback", headers=auth, json={"response_id": answer.id, **body})
            assert r.status_code == 200, r.text
    batch = collect(CollectSettings(), "bot", {})
    [item] = batch.interactions
    pseudonym = s.gateway.privacy.user  # end users are stored as pseudonyms (log.pseudonymize_users)
    assert [(r.key_id, r.user) for r in item.ratings] == [(record.id, pseudonym("alice")),
                                                          (record.id, pseudonym("bob"))]  # fmt: skip
    # one key is one voter whatever `user` it sends (a sybil's many users add nothing)
    two_needed = agree(item.ratings, 4, 2, 2, 0.75)
    assert isinstance(two_needed, Reject) and two_needed.reason == "too_few_raters"
    verdict = agree(item.ratings, 4, 2, 1, 0.75)
    assert isinstance(verdict, Verdict) and verdict.raters == 1 and verdict.polarity == "down"
    assert verdict.votes == {record.id: "down"}


def test_one_user_rating_twice_is_one_rater():
    ratings = [Rating(1, 1, "k1", user="alice"), Rating(2, 1, "k1", user="alice"), Rating(3, 1, "k2")]
    v = agree(ratings, 4, 2, 2, 0.75)
    assert isinstance(v, Verdict) and v.raters == 2
    # a key's rating without a user and one with the key id as user are the same rater
    same = agree([Rating(1, 1, "k1"), Rating(2, 1, "k1", user="k1")], 4, 2, 2, 0.75)
    assert isinstance(same, Reject) and same.reason == "too_few_raters"
