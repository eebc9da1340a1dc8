"""No API key dominates a curated batch (curate.max_per_key), and PII the gateway redacted stays PII
to curation (counted, or dropped with curate.pii=drop). Through a real gateway where it matters."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from serve.conftest import run_server
from tuneloop.config import load_config
from tuneloop.errors import ConfigError
from tuneloop.loop.collect import collect
from tuneloop.loop.config import CollectSettings, CurateSettings
from tuneloop.loop.curate import Known, build_dataset, curate, rater_key
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore

from .conftest import batch, item


def known() -> Known:
    return Known.from_rows([], 0.8)


def corrections(key: str, n: int) -> list:
    """`n` answers rated by `key`, each corrected (distinct questions: no duplicates)."""
    codes = [hashlib.sha256(f"{key}{i}".encode()).hexdigest()[:12] for i in range(n)]
    return [item(f"What is {c}?", "No idea.", [(1, key, f"{c} is a part number.")]) for c in codes]


def test_one_key_keeps_at_most_its_share_and_the_surplus_is_counted(tmp_path):
    out = curate(batch(*corrections("k1", 6), *corrections("k2", 2)), CurateSettings(), known())
    assert [p["key_id"] for p in out.proposals] == ["k1"] * 4 + ["k2"] * 2  # 0.5 x 8 = 4 for k1
    capped = [r for r in out.rejected if r["reason"] == "per_key_cap"]
    assert len(capped) == 2 and "key k1 brought 6 of 8 proposals; at most 4 per key" in capped[0]["detail"]
    manifest = build_dataset(out.proposals, out, tmp_path, CurateSettings(), [], [], {"model": "bot"})
    assert manifest["rejections"] == {"per_key_cap": 2}
    assert {e["key_id"] for e in manifest["examples"]} == {"k1", "k2"}


def test_a_share_caps_nothing_for_a_single_key_but_a_count_does():
    one_key = batch(*corrections("k1", 5))
    assert len(curate(one_key, CurateSettings(), known()).proposals) == 5
    out = curate(batch(*corrections("k1", 5)), CurateSettings(max_per_key=3), known())
    assert len(out.proposals) == 3 and [r["reason"] for r in out.rejected] == ["per_key_cap"] * 2
    uncapped = curate(batch(*corrections("k1", 6), *corrections("k2", 1)), CurateSettings(max_per_key=None),
                      known())  # fmt: skip
    assert len(uncapped.proposals) == 7


def test_the_deciding_key_is_the_one_with_most_raters():
    from tuneloop.interactions.records import Rating

    ratings = [Rating(1, 1, "k1", user="a"), Rating(2, 1, "k2", user="b"), Rating(3, 1, "k2", user="c"),
               Rating(4, 1, "k2", user="c")]  # fmt: skip
    assert rater_key(ratings) == "k2" and rater_key([]) is None


@pytest.mark.parametrize("value", [2.5, 0, -1])
def test_max_per_key_is_a_share_or_a_whole_count(value):
    with pytest.raises(ConfigError, match="max_per_key"):
        load_config(CurateSettings, {"max_per_key": value})


# ------------------------------------------------------------------ through the gateway


def _ask_and_correct(url: str, key: str, questions: list[str], correction: str | None = None) -> None:
    """Ask each question with `key` and correct the answer (by default with an unrelated code per
    question, so no two corrections are near duplicates of each other)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    for q in questions:
        answer = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": q}])
        fix = correction or f"The answer is {hashlib.sha256(q.encode()).hexdigest()[:16]}."
        r = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                       json={"response_id": answer.id, "rating": "down", "correction": fix})  # fmt: skip
        assert r.status_code == 200, r.text


def test_one_busy_key_through_the_gateway_is_capped_and_named():
    keys = KeyStore()
    (busy, busy_rec), (other, other_rec) = keys.create("busy"), keys.create("other")
    cfg = ServeConfig.model_validate({"warmup": False})
    with run_server(cfg, {"bot": FakeClient()}) as s:
        _ask_and_correct(s.url, busy, [f"Which code does service {i} use?" for i in range(6)])
        _ask_and_correct(s.url, other, [f"Which code does team {i} use?" for i in range(2)])
    b = collect(CollectSettings(), "bot", {})
    out = curate(b, CurateSettings(), known())
    assert {r.key_id for i in b.interactions for r in i.ratings} == {busy_rec.id, other_rec.id}
    by_key = [p["key_id"] for p in out.proposals]
    assert by_key.count(busy_rec.id) == 4 and by_key.count(other_rec.id) == 2
    capped = [r for r in out.rejected if r["reason"] == "per_key_cap"]
    assert len(capped) == 2 and busy_rec.id in capped[0]["detail"]


def test_pii_in_a_correction_is_never_trained_on():
    """The gateway stores the correction redacted; curation counts its placeholder as PII, and with
    curate.pii=drop the answer is dropped as if the PII were still there."""
    key, _ = KeyStore().create("app")
    cfg = ServeConfig.model_validate({"warmup": False})
    with run_server(cfg, {"bot": FakeClient()}) as s:
        _ask_and_correct(s.url, key, ["How do I reach support?"], "Mail help.desk@example.com for support.")
    b = collect(CollectSettings(), "bot", {})
    assert b.interactions[0].ratings[0].correction == "Mail <EMAIL> for support."
    redacted = curate(b, CurateSettings(), known())
    assert redacted.proposals[0]["chosen"] == "Mail <EMAIL> for support." and redacted.pii == {"email": 1}
    dropped = curate(b, CurateSettings(pii="drop"), known())
    assert not dropped.proposals and dropped.rejected[0]["reason"] == "pii"
    assert dropped.rejected[0]["detail"] == "email"
