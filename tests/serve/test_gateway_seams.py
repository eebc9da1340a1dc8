"""The gateway's typed seams: one `Gateway` on app.state, and every engine client declaring the
capabilities the gateway relies on (no attribute guessing)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tuneloop.serve import ServeConfig, create_app
from tuneloop.serve.client import EngineClient, GenerateRequest
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.gateway import Gateway
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.upstream import UpstreamClient

CAPABILITIES = ("version", "max_num_seqs", "tokenizer", "active")


def test_app_state_holds_the_gateway_alone(tmp_path):
    cfg = ServeConfig.model_validate({"auth": {"database_url": f"sqlite:///{tmp_path / 'gw.db'}"}})
    app = create_app(cfg, {"fake": FakeClient()})
    gw = app.state.gateway
    assert isinstance(gw, Gateway) and gw.config is cfg
    assert app.state._state == {"gateway": gw}  # no untyped bag of attributes beside it


def _check(client: EngineClient) -> None:
    missing = [name for name in CAPABILITIES if not hasattr(client, name)]
    assert not missing, f"{type(client).__name__} lacks {missing}"
    assert isinstance(client.max_num_seqs, int) and client.active == 0


def test_fake_and_upstream_clients_declare_their_capabilities():
    request = GenerateRequest(request_id="r", prompt="one two three")
    fake = FakeClient()
    _check(fake)
    assert fake.version is None and fake.tokenizer is None
    assert asyncio.run(fake.prepare(request)).prompt_ids == [0, 1, 2]  # sized: one id per word
    upstream = UpstreamClient("http://127.0.0.1:9/v1", "m")
    try:
        _check(upstream)
        assert upstream.version is None and upstream.tokenizer is None and upstream.max_num_seqs == 0
        assert asyncio.run(upstream.prepare(request)) is None  # not ours to size: the gateway estimates
    finally:
        asyncio.run(upstream.close())


def test_local_client_declares_its_capabilities(tiny_llama):
    shared = SharedEngine.load(tiny_llama, kv_cache_gib=0.02)
    client = LocalClient(shared)
    try:
        _check(client)
        assert client.tokenizer is shared.tokenizer and client.max_num_seqs == shared.max_num_seqs > 0
        ready = asyncio.run(client.prepare(GenerateRequest(request_id="r", prompt="hello", fit_context=True)))
        assert ready is not None and ready.prompt_ids and not ready.fit_context
    finally:
        asyncio.run(client.close())


@pytest.mark.parametrize("stream", [False, True])
def test_an_admitted_request_is_counted_on_its_client_until_it_ends(serve, stream):
    """`active` (the in-flight count a reload waits on) rises at admission and is back to 0 after."""
    fake = FakeClient(delay_s=0.05)
    seen: list[int] = []
    with serve(ServeConfig.model_validate({"auth": {"enabled": False}}), {"fake": fake}) as s:

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                body = {"model": "fake", "prompt": "a b c d", "max_tokens": 4, "stream": stream}
                task = asyncio.create_task(c.post("/v1/completions", json=body))
                await asyncio.sleep(0.1)
                seen.append(fake.active)
                return await task

        r = asyncio.run(main())
        assert r.status_code == 200
        assert seen == [1] and fake.active == 0 and s.gateway.models["fake"].gate.running == 0
