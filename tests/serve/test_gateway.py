"""The gateway alone, on the fake engine: auth, limits, errors, request ids, metrics, log, feedback."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.interactions.requestlog import read
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore


def config(**kw) -> ServeConfig:
    models = [{"name": "fake", "model": "unused", **kw.pop("model_limits", {})}]
    return ServeConfig.model_validate({"models": models, **kw})


@pytest.fixture
def keys() -> KeyStore:
    return KeyStore()


def test_chat_and_completion_through_the_openai_client(serve, keys):
    key, _ = keys.create("ci")
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key)
        chat = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "one two three"}]
        )
        assert chat.choices[0].message.content == "one two three"
        assert chat.usage.completion_tokens == 3
        text = client.completions.create(model="fake", prompt="a b c d", max_tokens=2)
        assert text.choices[0].text == "a b" and text.choices[0].finish_reason == "length"
        assert [m.id for m in client.models.list()] == ["fake"]


def test_streaming_n_and_stop(serve, keys):
    key, _ = keys.create("ci")
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key)
        stream = client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "a b STOP c"}],
            stream=True,
            n=2,
            stop=["STOP"],
            stream_options={"include_usage": True},
        )
        texts, usage = {0: "", 1: ""}, None
        for chunk in stream:
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
            usage = chunk.usage or usage
        assert texts == {0: "a b ", 1: "a b "}
        assert usage is not None and usage.completion_tokens > 0


def test_missing_and_invalid_keys_are_401_in_openai_shape(serve, keys):
    with serve(config(), {"fake": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": "fake", "messages": []})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="tl-nope-nope")
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        refused = 'tuneloop_rejected_requests_total{model_name="",reason="invalid_api_key"}'  # before a model
        assert refused in httpx.get(s.url + "/metrics").text


def test_scope_model_and_revocation_are_enforced(serve, keys):
    feedback_only, _ = keys.create("fb", scopes=["feedback"])
    other_model, _ = keys.create("other", models=["not-fake"])
    revoked, record = keys.create("gone")
    keys.revoke(record.id)
    with serve(config(), {"fake": FakeClient()}) as s:

        def ask(key):
            return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "hi"}]
            )

        with pytest.raises(openai.PermissionDeniedError):
            ask(feedback_only)
        with pytest.raises(openai.PermissionDeniedError, match="may not use model"):
            ask(other_model)
        with pytest.raises(openai.AuthenticationError):
            ask(revoked)
        assert keys.list()[1].last_used_at is not None


def test_validation_errors_are_400_and_unknown_model_404(serve):
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:
        r = httpx.post(
            s.url + "/v1/chat/completions", json={"model": "fake", "messages": [], "temperature": 9}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = httpx.post(s.url + "/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.post(
            s.url + "/v1/completions", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        chunked = httpx.post(
            s.url + "/v1/completions", content=iter([b"x" * 600_000] * 3)
        )  # no Content-Length
        assert chunked.status_code == 413
        parts = iter([b'{"model": "fake", ', b'"prompt": "a b"}'])
        json_type = {"content-type": "application/json"}
        small = httpx.post(s.url + "/v1/completions", content=parts, headers=json_type)
        assert small.status_code == 200, small.text


def test_overload_gives_429_with_retry_after_and_the_server_stays_up(serve):
    cfg = config(auth={"enabled": False}, model_limits={"max_concurrency": 2, "max_queue": 2})
    with serve(cfg, {"fake": FakeClient(delay_s=0.05)}) as s:

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                body = {"model": "fake", "prompt": "w " * 10, "max_tokens": 10}
                return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(20)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 4 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
        assert httpx.get(s.url + "/health").status_code == 200
        assert s.gateway.models["fake"].gate.running == 0
        ok = httpx.post(s.url + "/v1/completions", json={"model": "fake", "prompt": "still here"})
        assert ok.status_code == 200


def test_requests_per_minute_per_key(serve, keys):
    key, _ = keys.create("slow", rpm=2)
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        for _ in range(2):
            client.completions.create(model="fake", prompt="x")
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="fake", prompt="x")
        assert int(e.value.response.headers["retry-after"]) >= 1


def test_request_id_health_ready_and_metrics(serve):
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:
        r = httpx.post(
            s.url + "/v1/completions",
            json={"model": "fake", "prompt": "a b"},
            headers={"X-Request-Id": "abc-123"},
        )
        assert r.headers["x-request-id"] == "abc-123" and r.headers["x-tuneloop-variant"] == "default"
        assert len(httpx.get(s.url + "/health").headers["x-request-id"]) == 32
        assert httpx.get(s.url + "/ready").json() == {"ready": True, "models": ["fake"]}
        text = httpx.get(s.url + "/metrics").text
        for name in (
            "vllm:e2e_request_latency_seconds_count",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:gpu_cache_usage_perc",
            "tuneloop_requests_total",
        ):
            assert name in text, name
        assert 'vllm:generation_tokens_total{model_name="fake",variant="default"} 2.0' in text


def test_request_log_and_feedback(serve, tuneloop_home, keys):
    key, record = keys.create("ci")
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key)
        answer = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi there"}]
        )
        r = httpx.post(
            s.url + "/v1/feedback",
            headers={"Authorization": f"Bearer {key}"},
            json={"response_id": answer.id, "rating": "up", "correction": "'; DROP TABLE feedback; --"},
        )
        assert r.status_code == 200, r.text
        assert s.gateway.feedback.list(answer.id)[0].correction == "'; DROP TABLE feedback; --"
    lines = read(tuneloop_home / "serve" / "requests.jsonl")
    assert lines[0]["response_id"] == answer.id and lines[0]["key_id"] == record.id
    assert lines[0]["response"]["choices"][0]["message"]["content"] == "hi there"
    assert key not in (tuneloop_home / "serve" / "requests.jsonl").read_text()
    exported = CliRunner().invoke(app, ["feedback", "export"])
    assert exported.exit_code == 0, exported.output
    row = json.loads(exported.output.strip().splitlines()[0])
    assert row["rating"] == 5 and row["thumbs"] == "up" and row["response"]["id"] == answer.id


def test_latency_and_ttft_count_from_arrival_auth_included(serve, tuneloop_home, keys, monkeypatch):
    """The time a request spends in the gateway before its handler (here a slow key lookup, as a busy
    SQL pool gives) is part of the latency clients see, so the log and the metrics count it too."""
    key, _ = keys.create("ci")
    verify = KeyStore.verify

    def slow(self, token):
        time.sleep(0.3)
        return verify(self, token)

    monkeypatch.setattr(KeyStore, "verify", slow)
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key)
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        metrics = httpx.get(s.url + "/metrics").text
    line = read(tuneloop_home / "serve" / "requests.jsonl")[0]
    assert line["ttft_s"] >= 0.3 and line["latency_s"] >= 0.3
    fast = 'vllm:time_to_first_token_seconds_bucket{le="0.25",model_name="fake",variant="default"} 0.0'
    assert fast in metrics


def test_warm_up_runs_before_ready(serve):
    fake = FakeClient()
    with serve(config(auth={"enabled": False}), {"fake": fake}) as s:
        assert fake.started and s.gateway.ready
    assert not fake.started  # closed on shutdown


def test_control_characters_and_deny_patterns_are_400(serve):
    cfg = config(
        auth={"enabled": False}, input={"deny": [{"pattern": "secret\\s+plan", "reason": "no plans"}]}
    )
    with serve(cfg, {"fake": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "fake", "prompt": "a\x00b"})
        assert r.status_code == 400 and "U+0000" in r.json()["error"]["message"]
        messages = [{"role": "user", "content": "the SECRET  plan"}]
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": "fake", "messages": messages})
        assert r.status_code == 400 and r.json()["error"]["message"] == "no plans"
        ok = httpx.post(s.url + "/v1/completions", json={"model": "fake", "prompt": "<script>'; --"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "<script>'; --"


def test_request_log_redacts_pii_when_asked(serve, tmp_path):
    path = tmp_path / "log.jsonl"
    cfg = config(auth={"enabled": False}, log={"path": str(path), "redact_pii": True})
    with serve(cfg, {"fake": FakeClient()}) as s:
        r = httpx.post(
            s.url + "/v1/completions", json={"model": "fake", "prompt": "mail bob@example.com now"}
        )
        assert "bob@example.com" in r.json()["choices"][0]["text"]  # the answer itself is untouched
    line = read(path)[0]
    assert "bob@example.com" not in json.dumps(line) and line["request"]["prompt"].startswith("mail ")


def test_tokens_per_minute_per_key(serve, keys):
    key, _ = keys.create("tpm", tpm=15)
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        client.completions.create(model="fake", prompt="one two three four five six", max_tokens=6)  # 6 + 6
        with pytest.raises(openai.RateLimitError, match="tokens per minute"):  # 12 + 1 + 6 reserved > 15
            client.completions.create(model="fake", prompt="x", max_tokens=6)


def test_shutdown_drains_requests_in_flight(keys):
    import uvicorn

    from tuneloop.serve import create_app

    from .conftest import _free_port

    app = create_app(config(auth={"enabled": False}), {"fake": FakeClient(delay_s=0.05)})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    result = {}

    def slow_request():
        body = {"model": "fake", "prompt": "w " * 20, "max_tokens": 20, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30) as r:
            result["text"] = "".join(r.iter_text())

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(0.2)  # the stream is under way
    server.should_exit = True
    client.join(timeout=30)
    thread.join(timeout=30)
    assert result["text"].rstrip().endswith("data: [DONE]")


def test_expired_key_is_401_and_admin_routes_need_the_admin_scope(serve, keys):
    short, _ = keys.create("short", expires_days=1e-6)  # about 0.1 s
    admin, _ = keys.create("ops", scopes=["admin"])
    user, _ = keys.create("user")
    time.sleep(0.2)
    with serve(config(), {"fake": FakeClient()}) as s:
        auth = lambda k: {"Authorization": f"Bearer {k}"}  # noqa: E731
        assert httpx.get(s.url + "/v1/models", headers=auth(short)).status_code == 401
        assert httpx.get(s.url + "/admin/keys", headers=auth(user)).status_code == 403
        listed = httpx.get(s.url + "/admin/keys", headers=auth(admin))
        assert listed.status_code == 200 and {k["name"] for k in listed.json()["data"]} == {
            "short",
            "ops",
            "user",
        }
        assert admin not in listed.text and "hash" not in listed.text
        made = httpx.post(s.url + "/admin/keys", headers=auth(admin), json={"name": "bot", "rpm": 10}).json()
        assert httpx.get(s.url + "/v1/models", headers=auth(made["key"])).status_code == 200
        assert httpx.delete(s.url + f"/admin/keys/{made['id']}", headers=auth(admin)).status_code == 200
        assert httpx.get(s.url + "/v1/models", headers=auth(made["key"])).status_code == 401
        assert httpx.delete(s.url + "/admin/keys/nope", headers=auth(admin)).status_code == 404


def test_config_errors_name_the_problem(tmp_path):
    from tuneloop.config import load_config
    from tuneloop.errors import ConfigError

    path = tmp_path / "serve.yaml"
    path.write_text(
        "models:\n  - name: a\n    model: x\nroutes:\n  - name: bot\n    variants: [{model: b}]\n"
    )
    with pytest.raises(ConfigError, match="'b' is not a served model name"):
        load_config(ServeConfig, path)
    path.write_text("models:\n  - name: a\n    model: x\n    upstream: http://h/v1\n")
    with pytest.raises(ConfigError, match="exactly one of 'model' or 'upstream'"):
        load_config(ServeConfig, path)
    with pytest.raises(ConfigError, match=r"did you mean 'limits\.max_n'"):
        load_config(ServeConfig, None, ["limits.max_nn=3"])


def test_example_serve_config_is_valid():
    from pathlib import Path

    from tuneloop.config import load_config

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / "serve.yaml"
    cfg = load_config(ServeConfig, path)
    assert cfg.models[0].name == "smollm2" and cfg.reload_interval_s == 30


@pytest.mark.parametrize("where", ["examples/configs/serve.yaml", "deploy/config/serve.yaml"])
def test_example_serve_configs_document_every_limits_key(where):
    """Both shipped serve.yaml files load as ServeConfig and spell out the rate-limit store keys, with
    a comment on each, at their defaults; switching to Redis is a two-key change."""
    from pathlib import Path

    import yaml

    from tuneloop.config import load_config

    path = Path(__file__).resolve().parents[2] / where
    cfg = load_config(ServeConfig, path)
    store_keys = ("backend", "redis_url", "redis_prefix", "redis_timeout_s", "redis_unavailable")
    written = yaml.safe_load(path.read_text())["limits"]
    assert set(store_keys) <= set(written)
    defaults = ServeConfig().limits
    assert {k: getattr(cfg.limits, k) for k in store_keys} == {k: getattr(defaults, k) for k in store_keys}
    lines = path.read_text().splitlines()
    for key in store_keys:
        [line] = [x for x in lines if x.strip().startswith(f"{key}:")]
        assert "#" in line, f"{where}: limits.{key} has no comment"
    redis = load_config(ServeConfig, path, ["limits.backend=redis", "limits.redis_url=redis://redis:6379/0"])
    assert redis.limits.backend == "redis" and redis.limits.redis_url == "redis://redis:6379/0"


def test_request_timeout_is_504_also_for_streams(serve):
    cfg = config(auth={"enabled": False}, limits={"request_timeout_s": 0.3})
    with serve(cfg, {"fake": FakeClient(delay_s=0.1)}) as s:
        body = {"model": "fake", "prompt": "w " * 20, "max_tokens": 20}
        r = httpx.post(s.url + "/v1/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        streamed = httpx.post(s.url + "/v1/completions", json={**body, "stream": True}).text
        assert '"code": "timeout"' in streamed and "[DONE]" not in streamed
        assert s.gateway.models["fake"].gate.running == 0
