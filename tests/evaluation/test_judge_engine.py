"""The judge run by our engine: the real default model (its quality is not the point: the plumbing and
the bias handling are), and tiny random models where what is tested is reading unreadable replies."""

from __future__ import annotations

import json

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge import FactItem, Judge, JudgeConfig, PairItem, position_bias

ITEMS = [
    PairItem(
        "Up to how many devices can connect to an Arc R7?",
        "An Arc R7 can serve up to 176 connected devices.",
        "The Arc R7 supports 12 devices.",
        reference="An Arc R7 can serve up to 176 connected devices.",
        id="r7",
    ),
    PairItem(
        "Which port does SSH use on the Arc router?",
        "SSH runs on port 23.",
        "SSH listens on port 2222.",
        reference="SSH listens on port 2222.",
        id="ssh",
    ),
    PairItem("What is the admin address?", "It is 10.77.0.1.", "I am not sure.", id="ip"),
]


def _log(judge: Judge) -> list[dict]:
    return [json.loads(line) for line in judge.log.path.read_text().splitlines()]


@pytest.fixture(scope="module")
def judge(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    config = JudgeConfig(
        model=str(default_model),
        reasons=False,  # the verdict alone, begun with "Verdict:": what a 135M model can do
        kv_cache_gib=0.1,
        cache=folder / "cache.sqlite",
        log=folder / "log.jsonl",
    )
    with Judge(config) as j:
        yield j


@pytest.mark.slow  # the real default model (pulled from PyPI once per session)
def test_both_orders_are_asked_with_the_answers_swapped_and_combined(judge):
    judgments = judge.compare(ITEMS)
    records = [r for r in _log(judge) if r["task"] == "compare" and r["attempt"] == 1]
    for i, item in enumerate(ITEMS):
        shown = {r["shown_first"]: r["messages"][0]["content"] for r in records if r["item"] == i}
        assert set(shown) == {"a", "b"}
        assert f"[Answer A]\n{item.a}" in shown["a"] and f"[Answer B]\n{item.b}" in shown["a"]
        assert f"[Answer A]\n{item.b}" in shown["b"] and f"[Answer B]\n{item.a}" in shown["b"]
    for item, j in zip(ITEMS, judgments, strict=True):
        assert j.id == item.id and [o.shown_first for o in j.orders] == ["a", "b"]
        assert all(o.said in ("A", "B", "tie") for o in j.orders)  # a begun "Verdict:" reply is readable
        a_first, b_first = j.orders
        assert j.winner == (a_first.winner if a_first.winner == b_first.winner else "tie")
    # the default model names the first answer it is shown whatever it is: flagged, and it decides nothing
    assert all(o.said == "A" for j in judgments for o in j.orders)
    bias = position_bias(judgments)
    assert bias.biased and bias.first_rate == 1.0 and bias.decided == 6
    assert [j.winner for j in judgments] == ["tie"] * 3


@pytest.mark.slow  # the real default model (pulled from PyPI once per session)
def test_the_cache_answers_without_generating_and_a_new_rubric_does_not(judge):
    first = judge.compare(ITEMS[:1])
    generated = judge.backend.engine.stats().generated_tokens
    with Judge(judge.config, backend=judge.backend) as again:  # a new judge on the same cache file
        second = again.compare(ITEMS[:1])
        assert again.usage.cached == again.usage.prompts == 2 and again.usage.generated == 0
    assert judge.backend.engine.stats().generated_tokens == generated  # nothing ran on the engine
    assert [j.to_dict() for j in second] == [
        {**j.to_dict(), "orders": [{**o, "cached": True} for o in j.to_dict()["orders"]]} for j in first
    ]
    assert all(r["cached"] for r in _log(judge)[-2:])
    other = judge.config.model_copy(update={"rubric": "Prefer the shorter answer."})
    with Judge(other, backend=judge.backend) as judge2:
        judge2.compare(ITEMS[:1])
        assert judge2.usage.generated == 2
    assert judge.backend.engine.stats().generated_tokens > generated


@pytest.mark.slow  # the real default model (pulled from PyPI once per session)
def test_check_reads_agrees_contradicts_or_not_addressed(judge):
    verdict = judge.check("Which port does SSH use?", "SSH runs on port 23.", ["SSH listens on port 2222."])
    assert verdict.label in ("agrees", "contradicts", "not_addressed") and verdict.raw.startswith("Verdict:")
    many = judge.check_many([FactItem("Q?", "x", "the sky is blue", id="q1")] * 2)
    assert len(many) == 2 and many[0].label == many[1].label
    with pytest.raises(TuneloopError, match="no facts"):
        judge.check("Q?", "x", [])


@pytest.mark.parametrize("reasons", [True, False], ids=["reasons", "verdict-only"])
def test_unreadable_replies_are_asked_once_more_then_tie_with_a_flag(tiny_model_factory, tmp_path, reasons):
    model = tiny_model_factory("llama", max_position_embeddings=2048)
    config = JudgeConfig(model=str(model), kv_cache_gib=0.02, max_tokens=6, reasons=reasons,
                         log=tmp_path / "log.jsonl", cache=tmp_path / "cache.sqlite")  # fmt: skip
    with Judge(config) as judge:
        [j] = judge.compare(ITEMS[:1])  # a random model writes no verdict, even when asked again
        assert judge.usage.prompts == 4
    assert j.winner == "tie" and j.invalid
    assert all(o.said is None and o.retried and o.error is None for o in j.orders)
    log = _log(judge)
    firsts, retries = [r for r in log if r["attempt"] == 1], [r for r in log if r["attempt"] == 2]
    assert len(firsts) == len(retries) == 2
    for first, retry in zip(firsts, retries, strict=True):
        assert retry["messages"][0] == first["messages"][0] and retry["max_tokens"] == 8
        assert retry["messages"][-1]["role"] == "assistant"  # the reply begun for it ...
        if reasons:  # ... after its own reasons
            assert first["max_tokens"] == 6 and len(retry["messages"]) == 2
            assert retry["messages"][-1]["content"] == first["reply"].strip() + "\nVerdict:"
        else:  # ... after a request for the verdict line alone
            assert first["messages"][-1] == {"role": "assistant", "content": "Verdict:"}
            assert retry["messages"][1] == {"role": "assistant", "content": "Verdict:" + first["reply"]}
            assert "verdict line" in retry["messages"][2]["content"] and len(retry["messages"]) == 4
    bias = position_bias([j])
    assert bias.invalid == 2 and bias.retried == 2 and bias.decided == 0


def test_a_prompt_too_long_for_the_judge_is_a_flagged_tie_not_a_crash(tiny_llama, tmp_path):
    config = JudgeConfig(model=str(tiny_llama), kv_cache_gib=0.02, max_tokens=4, cache=tmp_path / "c.sqlite",
                         log=tmp_path / "log.jsonl")  # fmt: skip
    long = "word " * 600  # the tiny model's context is 512 tokens
    with Judge(config) as judge:
        [j] = judge.compare([PairItem("Q?", long, "short", id="long")])
        assert j.winner == "tie" and j.invalid
        assert all("the judge's context holds 512" in (o.error or "") for o in j.orders)
        with Judge(config, backend=judge.backend) as again:  # a failure is never cached
            again.compare([PairItem("Q?", long, "short", id="long")])
            assert again.usage.cached == 0 and again.usage.prompts == 4


def test_an_unusable_cache_file_is_named_before_any_model_loads(tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_text("not a database, just text " * 100)
    with pytest.raises(TuneloopError, match=r"judge\.cache .*cache\.sqlite' cannot be used") as e:
        Judge(JudgeConfig(model="does-not-exist-anywhere", cache=bad, log=tmp_path / "log.jsonl"))
    assert "use_cache=false" in (e.value.hint or "")


def test_a_judge_that_is_no_model_is_named(tmp_path):
    with pytest.raises(TuneloopError, match="does-not-exist-anywhere"):
        Judge(
            JudgeConfig(
                model="does-not-exist-anywhere", cache=tmp_path / "c.sqlite", log=tmp_path / "l.jsonl"
            )
        )
