"""schemathesis against the gateway's own OpenAPI document, with every check schemathesis has.

A real uvicorn on 127.0.0.1 with the fake engine and an API key holding every scope (sent both ways the
document names: Bearer and X-Api-Key), so the requests reach the handlers. Every operation gets valid
(positive) and invalid (negative) data, and every check runs on every answer: no 5xx; statuses,
content types, headers and bodies as documented (each event of a stream included); invalid data
rejected and valid data accepted; a missing or wrong key refused. Examples per operation are capped
(EXAMPLES) to keep the file well under a minute on this CPU.
"""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tuneloop.errors import TuneloopError
from tuneloop.serve import ServeConfig, create_app
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore

EXAMPLES = 15


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from .conftest import run_server

    folder = tmp_path_factory.mktemp("schemathesis")
    cfg = _config(folder)
    key, _ = KeyStore(cfg.auth.database_url).create("schemathesis", scopes=["inference", "feedback", "admin"])
    from tuneloop.serve.routers import admin_feedback

    # a vote on an unknown response waits LOG_WAIT_S for its log line; random ids would wait 3 s each
    with pytest.MonkeyPatch.context() as mp, run_server(cfg, {"fake": FakeClient()}) as server:
        mp.setattr(admin_feedback, "LOG_WAIT_S", 0.2)
        server.key = key
        yield server


def _config(folder=None) -> ServeConfig:
    return ServeConfig.model_validate(
        {
            "models": [{"name": "fake", "model": "unused"}],
            "routes": [{"name": "ab", "variants": [{"model": "fake", "weight": 1}]}],
            "auth": {"database_url": f"sqlite:///{folder}/serve.db" if folder else None},
            "log": {"path": str(folder / "requests.jsonl") if folder else None},
        }
    )


# the operations, known at collection time (building the schema needs no server and no lifespan);
# schemathesis's own lazy `from_fixture` does not work with pytest 9
OPERATIONS = [
    (method.upper(), path)
    for path, item in create_app(_config()).openapi()["paths"].items()
    for method in item
]


def _set_models(body: object, name: str) -> None:
    """Every "model" field of a generated body (variants of a route too) names a served model."""
    if isinstance(body, dict):
        if "model" in body:
            body["model"] = name if name != "ab" or "variants" not in body else "fake"
        for value in body.values():
            _set_models(value, "fake")
    elif isinstance(body, list):
        for item in body:
            _set_models(item, "fake")


def _beyond_the_schema(path: str, body: object) -> bool:
    """A valid-looking request that a rule JSON Schema cannot state refuses with a 400 (the one rule)."""
    # /admin/preferences: `chosen` and `rejected` must differ (JSON Schema cannot compare two values)
    return (
        path == "/admin/preferences" and isinstance(body, dict) and body.get("chosen") == body.get("rejected")
    )


@pytest.fixture(scope="module")
def gateway_schema(gateway):
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_check_passes(method, path, gateway, gateway_schema):
    auth = {"Authorization": f"Bearer {gateway.key}", "X-Api-Key": gateway.key}
    operation = gateway_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, headers=auth),
        operation.as_strategy(GenerationMode.NEGATIVE, headers=auth),
    )
    statuses = collections.Counter()

    @given(case=cases, aim=st.sampled_from([None, "fake", "ab"]))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case, aim):
        if aim is not None:  # random model names only ever reach the 404; aim some at what is served
            _set_models(case.body, aim)
        excluded = [positive_data_acceptance] if _beyond_the_schema(path, case.body) else []
        response = case.call_and_validate(excluded_checks=excluded, timeout=30)
        statuses[response.status_code] += 1

    check()
    print(method, path, dict(statuses))
    assert statuses  # something was sent and answered as documented


def test_the_schema_covers_every_route_and_the_key_is_accepted(gateway):
    # guards the test above against testing nothing: all operations present, the key gets through
    paths = httpx.get(gateway.url + "/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/feedback", "/admin/keys/{key_id}"} <= set(paths)
    for headers in ({"Authorization": f"Bearer {gateway.key}"}, {"X-Api-Key": gateway.key}):
        assert httpx.get(gateway.url + "/admin/keys", headers=headers).status_code == 200


def test_out_of_range_key_quota_and_expiry_are_400_naming_the_field(gateway):
    # found by schemathesis: expires_days=1e9 overflowed the date arithmetic (a 500)
    headers = {"Authorization": f"Bearer {gateway.key}"}
    for field, value in (("expires_days", 1e9), ("rpm", 2**40), ("tpm", 0)):
        r = httpx.post(gateway.url + "/admin/keys", headers=headers, json={"name": "x", field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    with pytest.raises(TuneloopError, match="expires_days must be"):
        KeyStore(gateway.gateway.config.auth.database_url).create("cli", expires_days=1e9)
