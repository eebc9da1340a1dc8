"""The OpenAI API on the real engine (tiny random Llama), driven by the official `openai` client."""

from __future__ import annotations

import math

import openai
import pytest

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.models.loading import load_tokenizer
from tuneloop.serve import ServeConfig


# every test twice: the engine stepping in the server process, and in a process of its own
@pytest.fixture(scope="module", params=[False, True], ids=["in-process", "engine-process"])
def server(tiny_llama, tmp_path_factory, request):
    from .conftest import run_server

    cfg = ServeConfig.model_validate(
        {
            "models": [
                {
                    "name": "tiny",
                    "model": str(tiny_llama),
                    "kv_cache_gib": 0.02,
                    "engine_process": request.param,
                }
            ],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path_factory.mktemp('db')}/serve.db"},
            "log": {"path": str(tmp_path_factory.mktemp("log") / "requests.jsonl")},
        }
    )
    with run_server(cfg) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_greedy_completion_equals_offline_engine(client, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    ids = tok.encode("The capital of France", add_special_tokens=True)
    expected = LLMEngine.from_pretrained(tiny_llama, kv_cache_gib=0.02).generate(
        [ids], SamplingParams(max_tokens=8, temperature=0, ignore_eos=False)
    )[0]
    out = client.completions.create(model="tiny", prompt="The capital of France", max_tokens=8, temperature=0)
    assert out.choices[0].text == tok.decode(expected.token_ids, skip_special_tokens=True)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(expected.token_ids)


def test_streamed_chat_equals_non_streamed(client):
    messages = [{"role": "user", "content": "Hello, how can I help you today?"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == full.choices[0].message.content
    assert full.choices[0].finish_reason in ("stop", "length")


def test_seed_reproduces_and_n_choices_differ(client):
    kw = dict(model="tiny", prompt="Numbers: 0 1 2", max_tokens=10, temperature=1.0, seed=7, n=3)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1 and sorted(c.index for c in a.choices) == [0, 1, 2]


def test_text_stop_string_truncates_the_answer(client):
    free = (
        client.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=0).choices[0].text
    )
    stop = free[3:6]
    assert stop, free
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=0, stop=[stop])
    assert out.choices[0].text == free[: free.index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="Hello", max_tokens=16, temperature=0, stop=[stop], stream=True
        )
        if c.choices
    )
    assert streamed == out.choices[0].text


def test_chat_logprobs_and_completion_echo_scores_the_prompt(client):
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(c.logprob <= 0 and len(c.top_logprobs) == 2 for c in content)
    assert math.isclose(
        content[0].logprob, content[0].top_logprobs[0].logprob, abs_tol=1e-4
    )  # greedy = top-1
    echo = client.completions.create(
        model="tiny",
        prompt="The capital of France is Paris.",
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=0,
    )
    lp = echo.choices[0].logprobs
    assert echo.choices[0].text.startswith("The capital of France is Paris.")
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert len(lp.tokens) == echo.usage.prompt_tokens + 1


def test_engine_gauges_in_metrics(server):
    import httpx

    text = httpx.get(server.url + "/metrics").text
    assert 'vllm:gpu_cache_usage_perc{model_name="tiny"}' in text
    assert 'vllm:gpu_prefix_cache_hit_rate{model_name="tiny"}' in text


def test_echo_logprobs_of_a_repeated_prompt_are_identical(client):
    # the second request would hit the prefix cache; prompt logprobs bypass it, so nothing is missing
    kw = dict(
        model="tiny",
        prompt="Hello, how can I help you today? I would like",
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=0,
    )
    first = client.completions.create(**kw).choices[0].logprobs
    again = client.completions.create(**kw).choices[0].logprobs
    assert first.token_logprobs[0] is None and again.tokens == first.tokens
    assert again.token_logprobs[1:] == pytest.approx(first.token_logprobs[1:], abs=1e-5)


def test_echo_logprobs_across_prefill_chunks_equal_transformers(tiny_llama, serve):
    """A prompt prefilled in several chunks (16-token steps) scores exactly as one HF forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.engine.async_engine import AsyncEngine
    from tuneloop.serve.local import LocalClient, SharedEngine

    tok = load_tokenizer(tiny_llama)
    engine = LLMEngine.from_pretrained(tiny_llama, kv_cache_gib=0.02, max_num_batched_tokens=16)
    local = LocalClient(SharedEngine(AsyncEngine(engine), tok, tiny_llama))
    cfg = ServeConfig.model_validate({"auth": {"enabled": False}, "log": {"enabled": False}})
    prompt = "The capital of France is Paris. The capital of Italy is Rome. " * 3
    ids = tok.encode(prompt, add_special_tokens=True)
    assert len(ids) > 3 * 16  # several chunks
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0]
    with serve(cfg, {"tiny": local}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        for _ in range(2):  # the second time, the prompt's blocks are in the prefix cache
            out = client.completions.create(
                model="tiny", prompt=prompt, max_tokens=2, temperature=0, echo=True, logprobs=2
            )
            lps = out.choices[0].logprobs
            assert out.choices[0].text.startswith(prompt.strip()[:20])
            assert len(lps.tokens) == len(ids) + out.usage.completion_tokens
            assert lps.token_logprobs[0] is None
            assert lps.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-3)
            tops = list(zip(lps.top_logprobs[1:], lps.token_logprobs[1:], strict=True))
            assert all(len(top) == 2 and max(top.values()) >= lp - 1e-6 for top, lp in tops)


def test_client_disconnect_aborts_the_engine_request(server):
    import time

    import httpx

    body = {
        "model": "tiny",
        "prompt": "Numbers: 0 1 2 3",
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 3,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        for _line in r.iter_lines():
            break  # go away after the first event
    engine, gate = server.gateway.models["tiny"].client.shared.engine, server.gateway.models["tiny"].gate
    busy = lambda: engine.stats().running + engine.stats().waiting + gate.running  # noqa: E731
    deadline = time.monotonic() + 10
    while busy() and time.monotonic() < deadline:  # the server notices the disconnect at its next write
        time.sleep(0.05)
    assert engine.stats().running == 0 and gate.running == 0


@pytest.mark.slow
def test_default_model_served_answers_paris(default_model, tmp_path):
    from .conftest import run_server

    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "smollm2", "model": str(default_model), "kv_cache_gib": 0.1}],
            "auth": {"enabled": False},
            "log": {"path": str(tmp_path / "log.jsonl")},
        }
    )
    with run_server(cfg) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        out = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0)
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="smollm2", messages=messages, max_tokens=24, temperature=0, stream=True
            )
            if c.choices
        )
    assert "Paris" in out.choices[0].message.content
    assert streamed == out.choices[0].message.content


def test_too_long_prompt_is_a_400_even_when_streaming(client):
    long = "The capital of France is Paris. " * 400
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="maximum context length is 512 tokens"):
            out = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": long}], stream=stream
            )
            list(out) if stream else None


def test_upstream_forwards_logprobs_and_echo(server, serve):
    from tuneloop.serve.upstream import UpstreamClient

    front_cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "remote", "upstream": server.url + "/v1", "upstream_model": "tiny"}],
            "auth": {"enabled": False},
            "log": {"enabled": False},
        }
    )
    direct = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with serve(front_cfg, {"remote": UpstreamClient(server.url + "/v1", "tiny")}) as front:
        via = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
        kw = dict(
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
        )
        a = direct.chat.completions.create(model="tiny", **kw).choices[0]
        b = via.chat.completions.create(model="remote", **kw).choices[0]
        assert b.message.content == a.message.content
        assert [t.token for t in b.logprobs.content] == [t.token for t in a.logprobs.content]
        ekw = dict(prompt="Numbers: 0 1 2 3 4 5 6 7 8 9", max_tokens=2, temperature=0, echo=True, logprobs=1)
        e1 = direct.completions.create(model="tiny", **ekw).choices[0]
        e2 = via.completions.create(model="remote", **ekw).choices[0]
        assert e2.text == e1.text and e2.logprobs.tokens == e1.logprobs.tokens


def test_token_id_prompts_equal_text_prompts(client, tiny_llama):
    ids = load_tokenizer(tiny_llama).encode("The capital of France", add_special_tokens=True)
    kw = dict(model="tiny", max_tokens=6, temperature=0)
    as_text = client.completions.create(prompt="The capital of France", **kw)
    as_ids = client.completions.create(prompt=ids, **kw)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(prompt=[10**6], **kw)
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        client.completions.create(prompt=["a", "b"], **kw)
