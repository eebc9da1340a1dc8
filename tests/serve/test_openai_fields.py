"""Every request field of OpenAI's chat-completions and completions APIs: implemented, rejected with a
400 naming it, or accepted and ignored (the documented list); a field of neither API is a 400 too.
Tools and response formats are checked at the door: bad schemas, unknown tool names, content parts."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
COMPLETION = {"model": "fake", "prompt": "hello world", "max_tokens": 4}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "P", "schema": {"type": "object"}, "strict": True},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from .conftest import run_server

    folder = tmp_path_factory.mktemp("fields")
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "fake", "model": "unused"}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{folder}/serve.db"},
            "log": {"path": str(folder / "requests.jsonl")},
        }
    )
    with run_server(cfg, {"fake": FakeClient()}) as server:
        yield server


def post(gateway, path: str, body: dict) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, timeout=30)


# (path, field, value): accepted and answered (implemented, or in the documented ignored list)
ACCEPTED = [
    ("chat", "logit_bias", {"5": -100, "7": 2.5}),
    ("chat", "seed", 7),
    ("chat", "n", 2),
    ("chat", "stop", ["\n"]),
    ("chat", "user", "u1"),
    ("chat", "safety_identifier", "u1"),
    ("chat", "metadata", {"workload": "w"}),
    ("chat", "store", True),
    ("chat", "stream_options", {"include_usage": True, "include_obfuscation": False}),
    ("chat", "max_completion_tokens", 3),
    ("chat", "logprobs", True),
    ("chat", "top_logprobs", 2),
    ("chat", "presence_penalty", 0.5),
    ("chat", "frequency_penalty", 0.5),
    ("chat", "temperature", 0.5),
    ("chat", "top_p", 0.5),
    ("chat", "modalities", ["text"]),
    ("chat", "service_tier", "auto"),
    ("chat", "prompt_cache_key", "k"),
    ("chat", "prompt_cache_retention", "24h"),
    ("chat", "response_format", {"type": "text"}),
    ("chat", "response_format", {"type": "json_object"}),
    ("chat", "response_format", SCHEMA_FORMAT),
    ("chat", "tools", [TOOL]),
    ("chat", "tool_choice", "none"),
    ("chat", "parallel_tool_calls", False),
    ("completions", "logit_bias", {"5": -100}),
    ("completions", "echo", True),
    ("completions", "best_of", 1),
    ("completions", "seed", 1),
    ("completions", "response_format", SCHEMA_FORMAT),
    ("completions", "user", "u"),
    ("completions", "stream_options", {"include_usage": True}),
    # vLLM's sampling extensions (extra_body), which the engine implements
    ("chat", "top_k", 5),
    ("chat", "top_k", -1),
    ("completions", "min_p", 0.1),
    ("chat", "repetition_penalty", 1.2),
]


@pytest.mark.parametrize(
    ("path", "field", "value"), ACCEPTED, ids=[f"{p}-{f}-{i}" for i, (p, f, _) in enumerate(ACCEPTED)]
)
def test_an_implemented_or_ignored_field_is_accepted(gateway, path, field, value):
    body = {**(CHAT if path == "chat" else COMPLETION), field: value}
    if field == "stream_options":
        body["stream"] = True
    r = post(gateway, "/v1/chat/completions" if path == "chat" else "/v1/completions", body)
    assert r.status_code == 200, r.text


# (path, field, value, param): rejected with OpenAI's error shape, naming the field, saying why
REJECTED = [
    ("chat", "audio", {"voice": "alloy", "format": "wav"}, "audio"),
    ("chat", "prediction", {"type": "content", "content": "x"}, "prediction"),
    ("chat", "reasoning_effort", "low", "reasoning_effort"),
    ("chat", "verbosity", "low", "verbosity"),
    ("chat", "web_search_options", {}, "web_search_options"),
    ("chat", "functions", [{"name": "f"}], "functions"),
    ("chat", "function_call", "auto", "function_call"),
    ("chat", "modalities", ["text", "audio"], "modalities[1]"),
    ("chat", "guided_json", {}, "guided_json"),  # another server's extension: not silently dropped
    ("chat", "top_k", -2, "top_k"),
    ("completions", "suffix", "x", "suffix"),
    ("completions", "best_of", 3, "best_of"),
    ("completions", "min_p", 1.5, "min_p"),
    ("completions", "repetition_penalty", 0, "repetition_penalty"),
]


@pytest.mark.parametrize(
    ("path", "field", "value", "param"), REJECTED, ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(REJECTED)]
)
def test_an_unsupported_field_is_a_400_naming_it(gateway, path, field, value, param):
    body = {**(CHAT if path == "chat" else COMPLETION), field: value}
    r = post(gateway, "/v1/chat/completions" if path == "chat" else "/v1/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)
    if field in ("audio", "prediction", "reasoning_effort", "suffix", "functions"):
        assert "not supported by tuneloop serve" in error["message"]


def test_an_unsupported_content_part_is_a_400_naming_it(gateway):
    for part in (
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
    ):
        messages = [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]
        r = post(gateway, "/v1/chat/completions", {**CHAT, "messages": messages})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "messages[0].content[1].type"
        assert f"content part type '{part['type']}' is not supported" in error["message"]


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        (
            {
                "tools": [
                    {
                        **TOOL,
                        "function": {
                            **TOOL["function"],
                            "parameters": {"type": "object", "properties": {"city": {"type": 5}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
            "parameters of tool 'get_weather' is not a valid JSON Schema at 'properties/city/type'",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            "'nope', which is not in tools (get_weather)",
        ),
        ({"tool_choice": "required"}, "tool_choice", "tool_choice needs tools"),
        ({"tools": [TOOL, TOOL]}, "tools[1]", "a second function named 'get_weather'"),
        (
            {"tools": [{**TOOL, "function": {**TOOL["function"], "name": "bad name!"}}]},
            "tools[0].function.name",
            "",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "P", "schema": {"type": "objekt"}},
                }
            },
            "response_format.json_schema.schema",
            "schema 'P' is not a valid JSON Schema at 'type'",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.json_schema", ""),
        ({"response_format": {"type": "xml"}}, "response_format", ""),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids written as strings"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", ""),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "needs the tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    }
                ]
            },
            "messages[0]",
            "assistant message's",
        ),
    ],
)
def test_bad_tools_and_formats_are_400s_naming_the_field(gateway, change, param, says):
    r = post(gateway, "/v1/chat/completions", {**CHAT, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert says in error["message"]
    assert post(gateway, "/v1/chat/completions", CHAT).status_code == 200  # and the server goes on


def test_a_bad_schema_on_completions_is_a_400_too(gateway):
    bad = {"type": "json_schema", "json_schema": {"name": "P", "schema": {"minimum": "zero"}}}
    r = post(gateway, "/v1/completions", {**COMPLETION, "response_format": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema"


def test_the_openai_client_sees_a_bad_tool_schema_as_bad_request(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    tool = {**TOOL, "function": {**TOOL["function"], "parameters": {"type": "object", "required": "city"}}}
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.function\.parameters"):
        client.chat.completions.create(model="fake", messages=CHAT["messages"], tools=[tool])


def test_an_assistant_call_and_a_tool_result_are_accepted_in_the_conversation(gateway):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = post(gateway, "/v1/chat/completions", {**CHAT, "messages": messages, "tools": [TOOL]})
    assert r.status_code == 200, r.text


def test_the_request_log_records_tools_tool_choice_and_response_format(gateway):
    import json

    body = {**CHAT, "tools": [TOOL], "tool_choice": "auto", "metadata": {"case": "log-tools"}}
    assert post(gateway, "/v1/chat/completions", body).status_code == 200
    body = {**CHAT, "response_format": SCHEMA_FORMAT, "metadata": {"case": "log-format"}}
    assert post(gateway, "/v1/chat/completions", body).status_code == 200
    import time

    path = gateway.gateway.config.log.path
    for _ in range(100):
        lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
        cases = {(r.get("metadata") or {}).get("case"): r for r in lines}
        if "log-tools" in cases and "log-format" in cases:
            break
        time.sleep(0.05)
    assert cases["log-tools"]["request"]["tools"] == [TOOL]
    assert cases["log-tools"]["request"]["tool_choice"] == "auto"
    assert cases["log-format"]["request"]["response_format"] == SCHEMA_FORMAT
