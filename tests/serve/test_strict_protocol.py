"""The protocol is strict at the door: wrong JSON types are 400s naming the field (never coerced), every
number is bounded, admin routes check the key before the body, and the OpenAPI document says so."""

from __future__ import annotations

import httpx
import openai
import pytest

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}]}
COMPLETION = {"model": "fake", "prompt": "hello world"}


def config(**kw) -> ServeConfig:
    return ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused"}], **kw})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from .conftest import run_server

    folder = tmp_path_factory.mktemp("strict")
    cfg = config(
        auth={"database_url": f"sqlite:///{folder}/serve.db"}, log={"path": str(folder / "requests.jsonl")}
    )
    store = KeyStore(cfg.auth.database_url)
    with run_server(cfg, {"fake": FakeClient()}) as server:
        server.keys = {
            scope: store.create(scope, scopes=[scope])[0] for scope in ("inference", "feedback", "admin")
        }
        yield server


def post(gateway, path: str, body: object, scope: str = "inference", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.keys[scope]}"} if scope else {}
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=30, **kw)


@pytest.mark.parametrize(
    ("path", "change", "param"),
    [
        ("/v1/chat/completions", {"stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"stream": 1}, "stream"),
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
        ("/v1/chat/completions", {"max_tokens": "5"}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": 2.5}, "max_tokens"),
        ("/v1/chat/completions", {"n": True}, "n"),
        ("/v1/chat/completions", {"temperature": "1"}, "temperature"),
        ("/v1/chat/completions", {"temperature": False}, "temperature"),
        ("/v1/chat/completions", {"top_p": "0.5"}, "top_p"),
        ("/v1/chat/completions", {"presence_penalty": True}, "presence_penalty"),
        ("/v1/chat/completions", {"seed": "7"}, "seed"),
        ("/v1/chat/completions", {"top_logprobs": "2", "logprobs": True}, "top_logprobs"),
        ("/v1/chat/completions", {"stop": 5}, "stop"),
        ("/v1/chat/completions", {"stop": [""]}, "stop[0]"),
        ("/v1/chat/completions", {"user": 5}, "user"),
        ("/v1/chat/completions", {"model": 5}, "model"),
        (
            "/v1/chat/completions",
            {"stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        (
            "/v1/chat/completions",  # was a 500: the text of a content part was joined unchecked
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        (
            "/v1/chat/completions",  # this server serves text: an image part is refused, not dropped
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
        ),
        ("/v1/completions", {"prompt": [[False]]}, "prompt[0][0]"),
        ("/v1/completions", {"prompt": [1, True]}, "prompt[1]"),
        ("/v1/completions", {"prompt": [3, -1]}, "prompt[1]"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"echo": "true"}, "echo"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
    ],
)
def test_a_wrong_json_type_is_a_400_naming_the_field(gateway, path, change, param):
    r = post(gateway, path, {**(CHAT if "chat" in path else COMPLETION), **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert error["message"].startswith(f"{param}: "), error


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"seed": 2**64}, "seed", "less than or equal to 9223372036854775807"),  # crashed the engine step
        ({"seed": 2**63}, "seed", "less than or equal to 9223372036854775807"),
        ({"seed": -(2**63) - 1}, "seed", "greater than or equal to -9223372036854775808"),
        ({"user": "u" * 257}, "user", "at most 256 characters"),
        ({"n": 129}, "n", "less than or equal to 128"),
        ({"n": 9}, "n", "n must be at most 8"),  # the server's limits.max_n
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 4097}, "max_tokens", "at most 4096"),  # limits.max_completion_tokens
        ({"max_tokens": 2**31}, "max_tokens", "less than or equal to 2147483647"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"frequency_penalty": -3}, "frequency_penalty", "greater than or equal to -2"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 items"),
        ({"stop": "x" * 1001}, "stop", "at most 1000 characters"),
    ],
)
def test_every_number_and_length_is_bounded(gateway, change, param, says):
    r = post(gateway, "/v1/chat/completions", {**CHAT, **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"], r.text


def test_values_at_the_bounds_are_accepted_and_numbers_are_not_fussy(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.keys["inference"], max_retries=0)
    messages = CHAT["messages"]
    for seed in (2**63 - 1, -(2**63)):
        assert client.chat.completions.create(model="fake", messages=messages, seed=seed).choices
    out = client.chat.completions.create(model="fake", messages=messages, user="u" * 256, temperature=1)
    assert out.choices[0].message.content == "hi there"  # `temperature: 1` is a number, as in OpenAI
    two = post(gateway, "/v1/completions", {**COMPLETION, "n": 2.0, "max_tokens": 1.0, "prompt": [[5, 6.0]]})
    assert two.status_code == 200 and len(two.json()["choices"]) == 2, two.text  # 2.0 is an integer
    parts = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    joined = post(gateway, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": parts}]})
    assert joined.json()["choices"][0]["message"]["content"] == "one two"


def test_a_batch_of_prompts_is_a_400_that_says_send_one(gateway):
    r = post(gateway, "/v1/completions", {**COMPLETION, "prompt": ["a", "b"]})
    assert r.status_code == 400 and "send one prompt per request" in r.json()["error"]["message"], r.text
    assert post(gateway, "/v1/completions", {**COMPLETION, "prompt": ["only"]}).status_code == 200


def test_malformed_json_is_a_400_that_says_so(gateway):
    headers = {"Authorization": f"Bearer {gateway.keys['inference']}", "content-type": "application/json"}
    r = httpx.post(gateway.url + "/v1/completions", content=b'{"model": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "the request body is not valid JSON"
    )
    r = httpx.post(gateway.url + "/v1/completions", content=b"[]", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("request body: "), r.text


ADMIN_BODIES = [
    ("POST", "/admin/keys"),
    ("PUT", "/admin/routes/r"),
    ("POST", "/admin/preferences"),
    ("POST", "/admin/review/1/approve"),
    ("POST", "/admin/review/1/reject"),
    ("POST", "/admin/registry/models/m/promote"),
    ("POST", "/admin/registry/models/m/rollback"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_BODIES)
@pytest.mark.parametrize("body", [b'{"name": ', b"[1]"])
def test_admin_routes_check_the_key_before_the_body(gateway, method, path, body):
    def send(scope: str | None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if scope is not None:
            headers["Authorization"] = f"Bearer {gateway.keys[scope]}"
        return httpx.request(method, gateway.url + path, content=body, headers=headers, timeout=30)

    assert send(None).status_code == 401  # no key: nothing about the body is told
    wrong = send("inference")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "insufficient_scope", wrong.text
    assert send("admin").status_code == 400  # the admin is told what is wrong with it


def test_inference_and_feedback_routes_check_the_key_before_the_body(gateway):
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/feedback"):
        r = httpx.post(gateway.url + path, content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 401, (path, r.text)
    wrong = post(gateway, "/v1/feedback", None, scope="inference", content=b"{")
    assert wrong.status_code == 403, wrong.text


# ------------------------------------------------------------------ the OpenAPI document


@pytest.fixture(scope="module")
def document(gateway):
    return httpx.get(gateway.url + "/openapi.json").json()


def test_openapi_says_400_in_the_error_shape_never_422(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = operation["responses"]
            assert "422" not in statuses, (method, path)
            if operation.get("parameters") or "requestBody" in operation:
                error = statuses["400"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}


def test_openapi_lists_every_status_a_route_can_give(document):
    paths = document["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            if "security" in operation:  # behind a key
                assert {"401", "403"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert "413" in statuses, (method, path)
    assert {p for p, item in paths.items() for op in item.values() if "security" not in op} == {
        "/health",
        "/ready",
        "/metrics",
    }
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert {"200", "400", "401", "403", "404", "413", "429", "502", "503", "504"} == set(
            paths[path]["post"]["responses"]
        )
    assert {"404", "409"} <= set(paths["/admin/registry/models/{name}/promote"]["post"]["responses"])
    assert "404" in paths["/admin/keys/{key_id}"]["delete"]["responses"]
    assert "503" in paths["/ready"]["get"]["responses"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["apiKey"]["name"] == "X-Api-Key"


def test_openapi_content_types_are_what_is_sent(gateway, document):
    paths = document["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    data = chat["text/event-stream"]["schema"]["properties"]["data"]
    assert data["else"]["contentSchema"]["anyOf"][0] == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    metrics = httpx.get(gateway.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    streamed = post(gateway, "/v1/chat/completions", {**CHAT, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")


def test_openapi_bounds_are_the_servers_limits(serve):
    cfg = config(auth={"enabled": False}, limits={"max_n": 3, "max_completion_tokens": 100})
    with serve(cfg, {"fake": FakeClient()}) as s:
        schemas = httpx.get(s.url + "/openapi.json").json()["components"]["schemas"]
        refused = httpx.post(s.url + "/v1/completions", json={**COMPLETION, "n": 4})
    assert schemas["CompletionRequest"]["properties"]["n"]["maximum"] == 3 and refused.status_code == 400
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        integer = schemas[name]["properties"]["max_tokens"]["anyOf"][0]
        assert integer["maximum"] == 100 and integer["minimum"] == 1
    seed = schemas["ChatCompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (-(2**63), 2**63 - 1)
    user = schemas["ChatCompletionRequest"]["properties"]["user"]["anyOf"][0]
    assert user["maxLength"] == 256


# ------------------------------------------------------------------ on the real engine (context 512)


@pytest.fixture(scope="module")
def tiny(tiny_llama, tmp_path_factory):
    from .conftest import run_server

    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama), "kv_cache_gib": 0.02}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path_factory.mktemp('db')}/serve.db"},
            "log": {"enabled": False},
        }
    )
    with run_server(cfg) as server:
        server.client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        yield server


def _ids(tiny_llama, text: str) -> list[int]:
    from tuneloop.models.loading import load_tokenizer

    return load_tokenizer(tiny_llama).encode(text, add_special_tokens=True)


def test_prompt_and_max_tokens_over_the_context_is_a_400_with_the_numbers(tiny, tiny_llama):
    prompt = "one two three " * 20
    p = len(_ids(tiny_llama, prompt))
    fits = 512 - p
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as over:
            out = tiny.client.completions.create(
                model="tiny", prompt=prompt, max_tokens=fits + 1, stream=stream
            )
            list(out) if stream else None
        error = over.value.body
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        assert error["message"] == (
            f"This model's maximum context length is 512 tokens. However, you requested 513 tokens "
            f"({p} in the messages, {fits + 1} in the completion). Please reduce the length of the "
            "messages or completion."
        )
    messages = [{"role": "user", "content": prompt}]
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512 tokens"):
        tiny.client.chat.completions.create(model="tiny", messages=messages, max_tokens=fits + 1)
    out = tiny.client.completions.create(model="tiny", prompt=[5] * 500, max_tokens=12, temperature=0)
    assert out.usage.prompt_tokens == 500 and out.usage.completion_tokens <= 12  # exactly full: served


def test_without_max_tokens_the_answer_may_use_what_the_context_has_left(tiny):
    # the tester's case: the answer was silently cut at the context (max_tokens defaulted to 256);
    # now a default fits the context, and a given max_tokens that does not is a 400 (above)
    out = tiny.client.completions.create(model="tiny", prompt=[5] * 506, temperature=0)
    assert out.usage.prompt_tokens == 506 and out.usage.completion_tokens <= 6
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError) as given:
        tiny.client.completions.create(model="tiny", prompt=[5] * 506, max_tokens=7)
    assert "you requested 513 tokens (506 in the messages, 7 in the completion)" in given.value.message
    with pytest.raises(openai.BadRequestError, match="the 512 tokens in the prompt leave no room") as full:
        tiny.client.completions.create(model="tiny", prompt=[5] * 512)
    assert full.value.body["code"] == "context_length_exceeded"


def test_a_token_id_outside_the_vocabulary_is_a_400_naming_its_index(tiny, tiny_llama):
    from tuneloop.models.loading import load_tokenizer

    vocab = len(load_tokenizer(tiny_llama))
    with pytest.raises(openai.BadRequestError) as bad:
        tiny.client.completions.create(model="tiny", prompt=[5, 6, vocab, 7], max_tokens=2)
    assert bad.value.body["code"] == "invalid_token_id" and bad.value.body["param"] == "prompt"
    assert bad.value.body["message"].startswith(
        f"prompt[2] is token id {vocab}, not in this model's vocabulary"
    )
    ok = tiny.client.completions.create(model="tiny", prompt=[5, 6, vocab - 1], max_tokens=2)
    assert ok.usage.prompt_tokens == 3


def test_echo_works_when_streaming(tiny):
    kw = dict(model="tiny", prompt="Numbers: 0 1 2", max_tokens=4, temperature=0, echo=True)
    whole = tiny.client.completions.create(**kw).choices[0].text
    streamed = "".join(
        c.choices[0].text for c in tiny.client.completions.create(**kw, stream=True) if c.choices
    )
    assert whole.startswith("Numbers: 0 1 2") and streamed == whole
