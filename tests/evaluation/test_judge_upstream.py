"""The judge as an OpenAI-compatible upstream: our own gateway (`tuneloop serve`, in-process, real
HTTP) asked through the official `openai` client. Behind it, a real engine (tiny model), or a judge
that answers by a fixed rule so that combining, retrying and the bias check can be checked exactly."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest

from serve.conftest import run_server
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge import Judge, JudgeConfig, PairItem, position_bias
from tuneloop.serve import ServeConfig
from tuneloop.serve.client import Delta, EngineLoad, GenerateRequest

Rule = Callable[[list[dict[str, str]]], str]
_ANSWERS = re.compile(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\n", re.S)


def by_content(messages: list[dict[str, str]]) -> str:
    """The answer that says port 2222 wins, whichever position it is in; a fact check sees port 23."""
    prompt = messages[0]["content"]
    found = _ANSWERS.search(prompt)
    if found is None:  # a fact check
        answer = prompt.split("[Answer]\n")[1]
        return "Port 23 is not 2222.\nVerdict: contradicts" if "23" in answer else "Verdict: agrees"
    a, b = ("2222" in x for x in found.groups())
    return "Verdict: " + ("A" if a and not b else "B" if b and not a else "tie")


def always_a(messages: list[dict[str, str]]) -> str:
    return "The first one looks fine.\nVerdict: A"


def never(messages: list[dict[str, str]]) -> str:
    return "Both answers have merits and I cannot say more."


def only_when_asked_again(messages: list[dict[str, str]]) -> str:
    return "Verdict: B" if messages[-1]["content"].startswith("Your reply did not end") else "Hmm."


class RuleJudge:
    """An `EngineClient` that replies by a rule and records what it was asked, and when."""

    version, max_num_seqs, tokenizer, active = None, 0, None, 0

    def __init__(self, rule: Rule, delay_s: float = 0.05):
        self.rule, self.delay_s = rule, delay_s
        self.asked: list[list[dict[str, str]]] = []
        self.starts: list[float] = []
        self.running = self.peak = 0

    async def start(self) -> None:
        pass

    async def prepare(self, request: GenerateRequest) -> None:
        return None  # not sized: the gateway estimates

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if request.request_id.startswith("warmup"):
            yield Delta(text="ok", finish_reason="stop")
            return
        self.asked.append(request.messages or [])
        self.starts.append(time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            yield Delta(
                text=self.rule(request.messages or []),
                finish_reason="stop",
                prompt_tokens=50,
                completion_tokens=4,
            )
        finally:
            self.running -= 1

    def load(self) -> EngineLoad:
        return EngineLoad(running=self.running)

    async def close(self) -> None:
        pass


ITEMS = [
    PairItem("Which port does SSH use?", "SSH listens on port 2222.", "SSH runs on port 23.", id="a-right"),
    PairItem("Which port does SSH use?", "Port 23.", "It listens on port 2222.", id="b-right"),
    PairItem("Which port does SSH use?", "Port 22.", "Port 23.", id="both-wrong"),
]


def _serve(client, tmp_path, auth: bool = False):
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "judge", "model": "unused"}],
            "auth": {"enabled": auth, "database_url": f"sqlite:///{tmp_path}/serve.db"},
            "log": {"path": str(tmp_path / "requests.jsonl")},
        }
    )
    return run_server(cfg, {"judge": client})


def _config(url: str, tmp_path, **settings) -> JudgeConfig:
    return JudgeConfig(base_url=url + "/v1", model_name="judge", cache=tmp_path / "c.sqlite",
                       log=tmp_path / "log.jsonl", **settings)  # fmt: skip


def test_both_orders_asked_concurrently_and_combined(tmp_path):
    rule = RuleJudge(by_content)
    with _serve(rule, tmp_path) as server, Judge(_config(server.url, tmp_path, concurrency=4)) as judge:
        judgments = judge.compare(ITEMS)
        verdict = judge.check(
            "Which port does SSH use?", "SSH runs on port 23.", ["SSH listens on port 2222."]
        )
    assert [j.winner for j in judgments] == ["a", "b", "tie"]
    assert [j.value for j in judgments] == [1, -1, 0] and all(j.consistent for j in judgments)
    assert len(rule.asked) == 7 and 1 < rule.peak <= 4  # 3 items x 2 orders + 1 check, 4 at a time at most
    firsts = {(m[0]["content"].split("[Answer A]\n")[1].split("\n")[0]) for m in rule.asked[:6]}
    assert firsts == {it.a for it in ITEMS} | {it.b for it in ITEMS}  # each answer was shown first once
    bias = position_bias(judgments)
    assert bias.first_rate == 0.5 and not bias.biased
    assert verdict.label == "contradicts" and not verdict.retried
    assert judge.usage.prompt_tokens == 7 * 50 and judge.usage.completion_tokens > 0


def test_a_judge_that_always_says_a_is_flagged_and_decides_nothing(tmp_path):
    rule = RuleJudge(always_a)
    with _serve(rule, tmp_path) as server, Judge(_config(server.url, tmp_path)) as judge:
        judgments = judge.compare(ITEMS * 2)
        assert len(rule.asked) == 6 and judge.usage.generated == 6  # each distinct prompt asked once
        assert judge.usage.cached == 6 and all(o.cached for j in judgments[3:] for o in j.orders)
    assert [j.winner for j in judgments] == ["tie"] * 6 and not any(j.consistent for j in judgments)
    bias = position_bias(judgments)
    assert bias.biased and bias.first_rate == 1.0 and bias.decided == 12 and bias.p_value < 0.001


def test_no_verdict_is_asked_once_more_with_the_reply_shown_back(tmp_path):
    rule = RuleJudge(never)
    with _serve(rule, tmp_path) as server, Judge(_config(server.url, tmp_path)) as judge:
        [j] = judge.compare(ITEMS[:1])
    assert j.winner == "tie" and j.invalid and all(o.retried and o.said is None for o in j.orders)
    assert len(rule.asked) == 4  # two orders, each asked twice, no more
    retry = rule.asked[-1]
    assert retry[1] == {"role": "assistant", "content": never([])}
    assert retry[2]["role"] == "user" and "Verdict: A" in retry[2]["content"]
    rule2 = RuleJudge(only_when_asked_again)
    with _serve(rule2, tmp_path / "2") as server, Judge(_config(server.url, tmp_path / "2")) as judge:
        [j] = judge.compare(ITEMS[:1])
    assert all(o.said == "B" and o.retried and not o.invalid for o in j.orders)
    assert [o.winner for o in j.orders] == ["b", "a"] and j.winner == "tie"  # "B" twice: position, not merit


def test_the_rate_limit_spaces_request_starts(tmp_path):
    rule = RuleJudge(by_content, delay_s=0.0)
    with _serve(rule, tmp_path) as server:
        config = _config(server.url, tmp_path, requests_per_minute=300)  # one start every 0.2 s
        with Judge(config) as judge:
            started = time.monotonic()
            judge.compare(ITEMS)
            took = time.monotonic() - started
    # six starts 0.2 s apart: the last leaves 1 s after the first (unlimited, all six leave at once)
    assert len(rule.starts) == 6 and took >= 1.0


def test_service_errors_stop_judging_and_name_the_setting(tmp_path, monkeypatch):
    with _serve(RuleJudge(by_content), tmp_path) as server:
        wrong = _config(server.url, tmp_path).model_copy(update={"model_name": "no-such-judge"})
        with (
            Judge(wrong) as judge,
            pytest.raises(TuneloopError, match=r"no model 'no-such-judge'.*judge\.model_name"),
        ):
            judge.compare(ITEMS[:1])
    with _serve(RuleJudge(by_content), tmp_path / "auth", auth=True) as server:
        monkeypatch.setenv("JUDGE_KEY", "not-a-key")
        keyed = _config(server.url, tmp_path / "auth", api_key_env="JUDGE_KEY", max_retries=0)
        with (
            Judge(keyed) as judge,
            pytest.raises(TuneloopError, match=r"refused the key.*judge\.api_key_env"),
        ):
            judge.compare(ITEMS[:1])
    gone = _config("http://127.0.0.1:9", tmp_path / "gone", max_retries=0, timeout_s=5)
    with (
        Judge(gone) as judge,
        pytest.raises(TuneloopError, match=r"did not answer after 0 retries.*judge\.base_url"),
    ):
        judge.compare(ITEMS[:1])
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(TuneloopError, match="the environment variable JUDGE_KEY is not set"):
        Judge(_config("http://127.0.0.1:9", tmp_path / "nokey", api_key_env="JUDGE_KEY"))


def test_a_real_engine_behind_the_gateway_judges_through_the_official_client(tiny_model_factory, tmp_path):
    model = tiny_model_factory("llama", max_position_embeddings=2048)
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "judge", "model": str(model), "kv_cache_gib": 0.02}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path}/serve.db"},
            "log": {"path": str(tmp_path / "requests.jsonl")},
        }
    )
    with run_server(cfg) as server, Judge(_config(server.url, tmp_path, max_tokens=4)) as judge:
        [j] = judge.compare(ITEMS[:1])
        usage = judge.usage
    assert usage.generated == 4 and usage.prompt_tokens > 4 * 100  # two orders, each retried: random text
    assert j.winner == "tie" and j.invalid and all(o.retried for o in j.orders)
    assert usage.completion_tokens <= 4 * 4
