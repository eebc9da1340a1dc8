"""Malformed requests never cause a 500: mutated bodies against every POST route (fake engine).

A small stand-in for schemathesis: valid requests with one field replaced by junk of another
type, removed, or nested; every answer must be a 2xx or a 4xx in OpenAI's error shape.
"""

from __future__ import annotations

import random

import httpx

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

VALID = {
    "/v1/chat/completions": {
        "model": "fake",
        "messages": [{"role": "user", "content": "hi there"}],
        "max_tokens": 4,
        "n": 2,
        "stop": ["x"],
        "temperature": 0.5,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": False,
        "user": "u",
    },
    "/v1/completions": {
        "model": "fake",
        "prompt": "hello world",
        "max_tokens": 3,
        "echo": True,
        "logprobs": 1,
        "seed": 3,
        "stream_options": {"include_usage": True},
    },
    "/v1/feedback": {"response_id": "chatcmpl-1", "rating": 4, "correction": "c", "comment": "ok"},
}
JUNK = [
    None,
    -1,
    0,
    10**12,
    1.5,
    float("-1e308"),
    "",
    "x" * 5000,
    "\u202e\U0001f600",
    True,
    [],
    [None],
    {},
    {"a": {"b": [1]}},
    ["x"] * 50,
]


def _mutations(rng: random.Random, body: dict, count: int) -> list[dict]:
    out = []
    for _ in range(count):
        mutated = dict(body)
        field = rng.choice(list(body))
        if rng.random() < 0.2:
            del mutated[field]
        else:
            mutated[field] = rng.choice(JUNK)
        if field == "messages" and rng.random() < 0.5:
            mutated[field] = [{"role": rng.choice(["user", "bogus", 3]), "content": rng.choice(JUNK)}]
        out.append(mutated)
    return out


def test_mutated_requests_never_500(serve):
    rng = random.Random(0)
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(cfg, {"fake": FakeClient()}) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        answered = c.post("/v1/completions", json=VALID["/v1/completions"]).json()["id"]
        feedback = {**VALID["/v1/feedback"], "response_id": answered}  # an answer given to this key
        for route, body in {**VALID, "/v1/feedback": feedback}.items():
            assert c.post(route, json=body).status_code == 200, route
            for mutated in _mutations(rng, body, 60):
                r = c.post(route, json=mutated)
                assert r.status_code < 500, (route, mutated, r.text)
                if r.status_code >= 400:
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        for raw in (b"", b"{", b"[]", b"null", b'{"model": "fake", "prompt": "\\ud800"}'):
            r = c.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (raw, r.text)


def test_openapi_schema_lists_every_route(serve):
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(cfg, {"fake": FakeClient()}) as s:
        paths = httpx.get(s.url + "/openapi.json").json()["paths"]
    for route in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/feedback",
        "/health",
        "/ready",
        "/metrics",
        "/admin/reload",
        "/admin/routes/{name}",
    ):
        assert route in paths


def _other_types(value: object) -> list[object]:
    """Values of other JSON types that a lax parser would coerce into `value`'s type."""
    if isinstance(value, bool):
        return [int(value), str(value).lower()]
    if isinstance(value, (int, float)):
        return [True, str(value)]
    if isinstance(value, str):
        return [1, True]
    return []  # lists and objects: their items are checked by schemathesis' negative data


def test_no_field_is_coerced_from_another_json_type(serve):
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(cfg, {"fake": FakeClient()}) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        for route, body in VALID.items():
            for field, value in body.items():
                for wrong in _other_types(value):
                    r = c.post(route, json={**body, field: wrong})
                    assert r.status_code == 400, (route, field, wrong, r.text)
                    assert r.json()["error"]["param"] == field, (route, field, wrong, r.text)
