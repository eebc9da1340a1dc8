"""Tool calling and structured outputs end to end: `tuneloop serve` with the default model (its real
template: the Hermes fallback) and a tiny model, driven by the official `openai` client, streaming and
not. Needs guided decoding in the engine (tuneloop.engine.guided)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tuneloop.models.loading import load_tokenizer
from tuneloop.serve import ServeConfig

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(BaseModel):
    name: str = Field(max_length=20)
    population: int = Field(ge=0, le=100_000_000)
    capital: bool


@pytest.fixture(scope="module")
def server(default_model, tiny_llama, tmp_path_factory):
    from .conftest import run_server

    folder = tmp_path_factory.mktemp("tools")
    cfg = ServeConfig.model_validate(
        {
            "models": [
                {"name": "smollm2", "model": str(default_model), "kv_cache_gib": 0.1},
                # the same model read as Llama 3.1 JSON calls: `auto` parses a JSON object as a call
                {
                    "name": "smollm2-json",
                    "model": str(default_model),
                    "kv_cache_gib": 0.1,
                    "tool_parser": "llama3_json",
                },
                {"name": "tiny", "model": str(tiny_llama), "kv_cache_gib": 0.02},
            ],
            "auth": {"enabled": False, "database_url": f"sqlite:///{folder}/serve.db"},
            "log": {"path": str(folder / "requests.jsonl")},
        }
    )
    with run_server(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def check_call(call) -> dict:
    assert call.id.startswith("call_") and call.type == "function"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_always_gives_a_call_that_matches_its_schema(client, stream):
    kw = dict(
        model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0
    )
    if stream:
        with client.beta.chat.completions.stream(**kw) as s:
            done = s.get_final_completion()
    else:
        done = client.chat.completions.create(**kw)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and all(check_call(c) is not None for c in choice.message.tool_calls)


def test_parallel_tool_calls_false_gives_exactly_one_call(client):
    out = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
    )
    assert len(out.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_calls_that_function(client, stream):
    choice = {"type": "function", "function": {"name": "get_time"}}
    kw = dict(model="smollm2", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=60, temperature=0)
    if stream:
        with client.beta.chat.completions.stream(**kw) as s:
            done = s.get_final_completion()
    else:
        done = client.chat.completions.create(**kw)
    calls = done.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    check_call(calls[0])
    assert done.choices[0].finish_reason == "tool_calls"


def test_auto_parses_the_call_the_model_wrote(client):
    """`auto` reads what the model wrote; here the output is guided to a Llama-3.1-style JSON call by a
    response_format, and the served name reads calls as llama3_json."""
    call_schema = {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "parameters": WEATHER["function"]["parameters"]},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "call", "schema": call_schema}}
    out = client.chat.completions.create(
        model="smollm2-json", messages=ASK, tools=TOOLS, response_format=fmt, max_tokens=80, temperature=0
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    check_call(choice.message.tool_calls[0])


def test_auto_without_a_call_is_plain_content(client):
    out = client.chat.completions.create(
        model="smollm2", messages=ASK, tools=TOOLS, max_tokens=8, temperature=0
    )
    choice = out.choices[0]
    if choice.message.tool_calls:  # the model may call; then it must be a well-formed call
        check_call(choice.message.tool_calls[0])
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_parse_with_a_pydantic_model_gives_that_model(client, stream):
    kw = dict(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    if stream:
        with client.beta.chat.completions.stream(**kw) as s:
            done = s.get_final_completion()
    else:
        done = client.beta.chat.completions.parse(**kw)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def test_chat_completions_parse_where_the_client_has_it(client):
    parse = getattr(client.chat.completions, "parse", None)
    if parse is None:
        pytest.skip("this openai version has only client.beta.chat.completions.parse")
    out = parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Lyon?"}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    assert isinstance(out.choices[0].message.parsed, City)


def test_json_object_and_completions_response_format_parse(client):
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "A JSON object about Paris"}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    schema = City.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": schema}}
    done = client.completions.create(
        model="smollm2", prompt="Paris:", max_tokens=80, temperature=0, extra_body={"response_format": fmt}
    )
    assert done.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(done.choices[0].text), schema)


def test_a_cut_off_structured_output_says_length(client):
    out = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "City", "schema": City.model_json_schema()},
        },
        max_tokens=3,
        temperature=0,
    )
    assert out.choices[0].finish_reason == "length"


def test_an_uncompilable_schema_is_a_400_naming_it_and_the_server_goes_on(server, client):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "bad", "schema": {"type": "string", "pattern": "(?<=a)b"}},
    }
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, "response_format": fmt, "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"
    assert "response_format.json_schema.schema" in r.json()["error"]["message"]
    ok = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_logit_bias_bans_and_forces_tokens(client, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    first = client.completions.create(
        model="tiny", prompt="The capital of France", max_tokens=4, temperature=0
    )
    banned = tok.encode(first.choices[0].text, add_special_tokens=False)[0]
    again = client.completions.create(
        model="tiny",
        prompt="The capital of France",
        max_tokens=4,
        temperature=0,
        logit_bias={str(banned): -100},
    )
    assert banned not in tok.encode(again.choices[0].text, add_special_tokens=False)
    forced = tok.encode(" Paris", add_special_tokens=False)[0]
    out = client.completions.create(
        model="tiny", prompt="x", max_tokens=3, temperature=0, logit_bias={str(forced): 100}
    )
    assert out.choices[0].text == tok.decode([forced] * 3)


def test_vllm_sampling_extensions_reach_the_engine(client):
    """top_k / min_p / repetition_penalty as vLLM users send them (extra_body) change the sampling."""
    greedy = client.completions.create(
        model="tiny", prompt="The capital of France", max_tokens=6, temperature=0
    )
    for extra in ({"top_k": 1}, {"min_p": 1.0}):  # both keep only the most likely token
        hot = client.completions.create(
            model="tiny",
            prompt="The capital of France",
            max_tokens=6,
            temperature=1.5,
            seed=3,
            extra_body=extra,
        )
        assert hot.choices[0].text == greedy.choices[0].text, extra
    penalised = client.completions.create(
        model="tiny",
        prompt="The capital of France",
        max_tokens=6,
        temperature=0,
        extra_body={"repetition_penalty": 5.0},
    )
    assert penalised.choices[0].text != greedy.choices[0].text


def test_logit_bias_outside_the_vocabulary_is_a_400(client):
    with pytest.raises(
        openai.BadRequestError, match="logit_bias: token id 99999999 is not in this model's vocabulary"
    ):
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, logit_bias={"99999999": 5})


def test_tool_calls_stream_with_usage_and_are_logged(server, client):
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=80,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            metadata={"case": "stream-log"},
        )
    )
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces and pieces[0].id and pieces[0].function.name in SCHEMAS
    assert sum(1 for p in pieces if p.function and p.function.arguments) >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    import time

    for _ in range(100):
        lines = [json.loads(x) for x in Path(server.gateway.config.log.path).read_text().splitlines()]
        logged = [r for r in lines if (r.get("metadata") or {}).get("case") == "stream-log"]
        if logged:
            break
        time.sleep(0.05)
    calls = logged[0]["response"]["choices"][0]["tool_calls"]
    assert calls[0]["function"]["name"] in SCHEMAS
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), SCHEMAS[calls[0]["function"]["name"]])
    assert logged[0]["request"]["tool_choice"] == "required"
