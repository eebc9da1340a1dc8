"""Live model changes: a reference that resolves elsewhere is swapped in without failing requests."""

from __future__ import annotations

import asyncio

import httpx

from tuneloop.serve import ServeConfig


def test_moving_the_reference_swaps_the_model_live_and_back(serve, tiny_llama, tiny_model_factory, tmp_path):
    v2 = tiny_model_factory("llama", seed=1)
    current = tmp_path / "current"  # stands for a registry alias: the same reference, a new target
    current.symlink_to(tiny_llama)
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "bot", "model": str(current), "kv_cache_gib": 0.02}], "auth": {"enabled": False}}
    )
    body = {"model": "bot", "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    with serve(cfg) as s:
        before = httpx.post(s.url + "/v1/completions", json=body).json()["choices"][0]["text"]
        assert httpx.post(s.url + "/admin/reload").json() == {"reloaded": []}  # nothing moved
        current.unlink()
        current.symlink_to(v2)

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                inflight = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(4)]
                await asyncio.sleep(0.01)
                reloaded = await c.post("/admin/reload")
                return reloaded, await asyncio.gather(*inflight)

        reloaded, responses = asyncio.run(main())
        assert reloaded.json() == {"reloaded": ["bot"]}
        assert all(r.status_code == 200 for r in responses)
        after = httpx.post(s.url + "/v1/completions", json=body).json()["choices"][0]["text"]
        assert after != before
        current.unlink()
        current.symlink_to(tiny_llama)  # rollback: move the reference back
        httpx.post(s.url + "/admin/reload")
        assert httpx.post(s.url + "/v1/completions", json=body).json()["choices"][0]["text"] == before


def test_reload_interval_picks_up_a_moved_reference(serve, tiny_llama, tiny_model_factory, tmp_path):
    import time

    current = tmp_path / "current"
    current.symlink_to(tiny_llama)
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "bot", "model": str(current), "kv_cache_gib": 0.02}],
            "auth": {"enabled": False},
            "reload_interval_s": 0.2,
        }
    )
    with serve(cfg) as s:
        first = s.gateway.models["bot"].client
        current.unlink()
        current.symlink_to(tiny_model_factory("llama", seed=1))
        deadline = time.monotonic() + 60
        while s.gateway.models["bot"].client is first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.gateway.models["bot"].client is not first
        assert httpx.post(s.url + "/v1/completions", json={"model": "bot", "prompt": "hi"}).status_code == 200


def test_a_request_queued_during_a_swap_runs_on_the_new_client(serve):
    # the old client is closed once nothing holds it, so a request that picked it and then waited
    # for a slot must run on the client that is current when it is admitted
    from dataclasses import replace

    from tuneloop.serve.fake import FakeClient

    old, new = FakeClient(delay_s=0.3), FakeClient()
    old.version, new.version = "bot/1", "bot/2"
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "bot", "model": "unused", "max_concurrency": 1}], "auth": {"enabled": False}}
    )
    with serve(cfg, {"bot": old}) as s:

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                body = {"model": "bot", "prompt": "a b", "max_tokens": 2}
                running = asyncio.create_task(c.post("/v1/completions", json=body))
                await asyncio.sleep(0.1)
                queued = asyncio.create_task(c.post("/v1/completions", json=body))
                await asyncio.sleep(0.1)  # it picked the old client and waits for the slot
                gw = s.gateway
                gw.models = {"bot": replace(gw.models["bot"], client=new)}  # what a reload does
                return await running, await queued

        running, queued = asyncio.run(main())
    assert running.headers["x-tuneloop-model-version"] == "bot/1"
    assert queued.status_code == 200 and queued.headers["x-tuneloop-model-version"] == "bot/2"


def test_a_replaced_engine_is_freed(serve, tiny_llama, tiny_model_factory, tmp_path):
    """The soak found the first engine kept alive after a reload (+1 model of RSS for the server's life):
    after two swaps no engine but the serving one is left, the first included."""
    import gc
    import time
    import weakref

    v2 = tiny_model_factory("llama", seed=1)
    current = tmp_path / "current"
    current.symlink_to(tiny_llama)
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "bot", "model": str(current), "kv_cache_gib": 0.02}], "auth": {"enabled": False}}
    )
    with serve(cfg) as s:
        first = weakref.ref(s.gateway.models["bot"].client.shared.engine.engine)
        for target in (v2, tiny_llama):
            current.unlink()
            current.symlink_to(target)
            assert httpx.post(s.url + "/admin/reload").json() == {"reloaded": ["bot"]}
        deadline = time.monotonic() + 30
        while first() is not None and time.monotonic() < deadline:  # retired once drained, in the background
            gc.collect()
            time.sleep(0.1)
        assert first() is None
        serving = s.gateway.models["bot"].client
        assert (
            httpx.post(
                s.url + "/v1/completions", json={"model": "bot", "prompt": "hi", "max_tokens": 2}
            ).status_code
            == 200
        )
    assert serving.shared.closed  # the engine serving at shutdown is closed then (not the first one)
