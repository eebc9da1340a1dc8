"""A client that leaves stops its engine request within a step, streaming or not, and is logged 499
with the tokens generated until then. Real server, real engine (slowed down so a request outlives its
client), the official `openai` client; the engine in the server process and in its own."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tuneloop.interactions.requestlog import read
from tuneloop.serve import ServeConfig

from .conftest import run_server
from .fault_engines import client as engine_client

STEP_S = 0.02  # per engine step: 400 tokens take > 8 s, the clients below leave after ~1 s
MAX_TOKENS = 400


@pytest.fixture(scope="module", params=[False, True], ids=["in-process", "engine-process"])
def server(tiny_llama, tmp_path_factory, request):
    log = tmp_path_factory.mktemp("log") / "requests.jsonl"
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama)}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path_factory.mktemp('db')}/serve.db"},
            "log": {"path": str(log)},
        }
    )
    local = engine_client(tiny_llama, request.param, step_s=STEP_S, no_eos=True)
    with run_server(cfg, {"tiny": local}) as s:
        s.log_path = log
        yield s


def load(server):
    return server.gateway.models["tiny"].client.load()


def idle_within(server, seconds: float) -> float:
    """Seconds until the engine runs and queues nothing (its stats are sent when it goes idle)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        s = load(server)
        if s.running == 0 and s.waiting == 0:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(
        f"the engine still runs the request {seconds} s after its client left: {load(server)}"
    )


def logged(server, request_id: str, timeout_s: float = 5) -> dict:
    """The request-log line of one request (written by the log's thread: wait for it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [r for r in read(server.log_path) if r["request_id"] == request_id]
        if lines:
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line for {request_id}")


def test_a_non_streaming_request_is_aborted_when_its_client_leaves(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):  # the client gives up and closes the connection
        client.completions.create(
            model="tiny", prompt="Hello there", max_tokens=MAX_TOKENS, temperature=0,
            extra_headers={"X-Request-Id": "gone-json"},
        )  # fmt: skip
    assert idle_within(server, 2.0) < 1.5  # aborted in the engine, not generated to the end
    line = logged(server, "gone-json")
    assert line["status"] == 499 and line["error"] == "client disconnected"
    # what it generated until then: not 0, not all 400 (~50 steps of 20 ms in the second it ran)
    assert line["prompt_tokens"] > 0 and 0 < line["completion_tokens"] < MAX_TOKENS
    generated = load(server)  # nothing more is generated for it
    time.sleep(0.3)
    assert load(server).running == generated.running == 0


def test_a_stream_closed_early_is_aborted_and_logged_499_with_its_tokens(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=MAX_TOKENS, temperature=0, stream=True,
        extra_headers={"X-Request-Id": "gone-sse"},
    )  # fmt: skip
    for chunks, _ in enumerate(stream, start=1):
        if chunks == 5:
            break
    stream.close()
    assert idle_within(server, 2.0) < 1.5
    line = logged(server, "gone-sse")
    assert line["status"] == 499 and line["error"] == "client disconnected"
    assert line["prompt_tokens"] > 0 and 5 <= line["completion_tokens"] < MAX_TOKENS
    assert len(line["response"]["choices"][0]["text"]) > 0  # the text it had been sent


def test_a_request_that_stays_is_served_and_logged_200(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    out = client.completions.create(
        model="tiny",
        prompt="Hello there",
        max_tokens=20,
        temperature=0,
        extra_headers={"X-Request-Id": "stays"},
    )
    assert out.usage.completion_tokens == 20 and out.choices[0].finish_reason == "length"
    line = logged(server, "stays")
    assert line["status"] == 200 and line["completion_tokens"] == 20


def test_a_chunked_upload_is_not_taken_for_a_disconnect(server):
    """The body of a chunked upload is read by the middleware first; the disconnect watch then
    listens to the server's own channel, which must not say "disconnect" before the client leaves."""
    body = b'{"model": "tiny", "prompt": "Hello there", "max_tokens": 20, "temperature": 0}'

    def chunks():
        yield body[:10]
        yield body[10:]

    r = httpx.post(
        server.url + "/v1/completions", content=chunks(), timeout=60,
        headers={"Content-Type": "application/json", "X-Request-Id": "chunked"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 20
    assert logged(server, "chunked")["status"] == 200
