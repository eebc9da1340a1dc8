"""LoRA adapters at runtime: vLLM's load/unload admin routes, more adapters than engine slots (LRU
eviction of idle adapters), and clear 4xx for adapters the engine cannot serve.

Real servers and the official `openai` client; the oracle for an adapter's answer is the same
adapter served alone by a fresh engine (`reference`), greedy.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tuneloop.errors import TuneloopError
from tuneloop.serve import ServeConfig
from tuneloop.serve.backends import build_clients
from tuneloop.serve.client import GenerateRequest
from tuneloop.serve.keys import KeyStore
from tuneloop.serve.local import LocalClient, SharedEngine

from .test_lora import make_adapter

MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]
ANSWER = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    """Three rank-4 adapters of tiny_llama, one of rank 8, and one trained on a wider model."""
    folder = tmp_path_factory.mktemp("adapters")
    made = {name: make_adapter(tiny_llama, folder / name, seed=i + 1) for i, name in enumerate("abc")}
    made["rank8"] = make_adapter(tiny_llama, folder / "rank8", seed=9, rank=8)
    return made


@pytest.fixture(scope="module")
def references(tiny_llama, adapters):
    """Each adapter's greedy answer to MESSAGES, served alone (a fresh engine, one adapter at a time)."""
    return {name: _alone(tiny_llama, adapters[name]) for name in "abc"} | {"base": _alone(tiny_llama, None)}


def _alone(base, adapter) -> str:
    shared = SharedEngine.load(base, kv_cache_gib=0.02)
    client = LocalClient(shared, shared.adapters.register("x", adapter) if adapter else None)
    request = GenerateRequest("ref", messages=MESSAGES, **ANSWER)

    async def answer() -> str:
        return "".join([d.text async for d in client.generate(request)])

    try:
        return asyncio.run(answer())
    finally:
        shared.engine.shutdown()


def _config(tiny_llama, engine_process: bool, engine: dict | None = None, **models) -> ServeConfig:
    entries = [{"name": "base", "model": str(tiny_llama), "kv_cache_gib": 0.02,
                "engine_process": engine_process, "engine": engine or {}}]  # fmt: skip
    entries += [{"name": n, "model": str(tiny_llama), "lora": str(f)} for n, f in models.items()]
    return ServeConfig.model_validate({"models": entries})


def _keys(cfg: ServeConfig) -> tuple[str, str]:
    """(admin key, inference-only key)."""
    store = KeyStore(cfg.auth.database_url)
    return store.create("ops", scopes=["admin", "inference"])[0], store.create("app", scopes=["inference"])[0]


def _chat(client: openai.OpenAI, model: str) -> str:
    return client.chat.completions.create(model=model, messages=MESSAGES, **ANSWER).choices[0].message.content


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*{re.escape(want)}[^}}]*\}} (\S+)$", text, re.M)
    assert m is not None, f"{name} {labels} not in /metrics"
    return float(m[1])


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_adapter_loaded_through_the_admin_api_serves_at_once_and_unloads_to_404(
    serve, tiny_llama, adapters, references, engine_process
):
    cfg = _config(tiny_llama, engine_process)
    admin, app = _keys(cfg)
    with serve(cfg) as s:

        def post(path: str, body: dict) -> httpx.Response:
            return httpx.post(s.url + path, json=body, headers={"Authorization": f"Bearer {admin}"})

        ai = openai.OpenAI(base_url=s.url + "/v1", api_key=app)
        assert _chat(ai, "base") == references["base"]
        with pytest.raises(openai.NotFoundError):
            _chat(ai, "support")

        r = post("/v1/load_lora_adapter", {"lora_name": "support", "lora_path": str(adapters["a"])})
        assert r.status_code == 200, r.text
        assert r.json() | {"message": ""} == {"id": "support", "object": "model", "parent": "base",
                                              "root": "a", "resident": True, "message": ""}  # fmt: skip
        cards = {m.id: m for m in ai.models.list()}
        assert (
            cards["support"].model_extra["parent"] == "base" and cards["base"].model_extra["parent"] is None
        )
        assert _chat(ai, "support") == references["a"] != references["base"]

        again = post("/v1/load_lora_adapter", {"lora_name": "support", "lora_path": str(adapters["a"])})
        assert again.status_code == 200 and "already loaded" in again.json()["message"]  # the same: no change
        other = post("/v1/load_lora_adapter", {"lora_name": "support", "lora_path": str(adapters["b"])})
        assert other.status_code == 400 and "already served" in other.json()["error"]["message"]
        taken = post("/v1/load_lora_adapter", {"lora_name": "base", "lora_path": str(adapters["b"])})
        assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"

        # an answer streaming while its adapter is unloaded finishes; the next request is a 404
        stream = ai.chat.completions.create(model="support", messages=MESSAGES, stream=True, **ANSWER)
        first = next(iter(stream))
        r = post("/v1/unload_lora_adapter", {"lora_name": "support"})
        assert r.status_code == 200 and r.json()["deleted"] is True, r.text
        text = (first.choices[0].delta.content or "") + "".join(
            c.choices[0].delta.content or "" for c in stream if c.choices
        )
        assert text == references["a"]
        with pytest.raises(openai.NotFoundError):
            _chat(ai, "support")
        assert "support" not in {m.id for m in ai.models.list()}
        assert post("/v1/unload_lora_adapter", {"lora_name": "support"}).status_code == 404
        assert post("/v1/unload_lora_adapter", {"lora_name": "base"}).status_code == 400  # not an adapter

        engine = s.gateway.models["base"].client.shared.engine
        deadline = time.monotonic() + 10
        while engine.lora_names() and time.monotonic() < deadline:  # its slot is freed once drained
            time.sleep(0.05)
        assert engine.lora_names() == set()
        metrics = httpx.get(s.url + "/metrics").text
        assert _metric(metrics, "tuneloop_lora_adapters", state="registered") == 0
        assert _metric(metrics, "tuneloop_lora_adapters", state="resident") == 0


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_more_adapters_than_slots_take_turns_and_answer_as_each_alone(
    serve, tiny_llama, adapters, references, engine_process
):
    # two slots, three adapters: two from serve.yaml, one loaded at runtime
    cfg = _config(tiny_llama, engine_process, {"max_loras": 2}, a=adapters["a"], b=adapters["b"])
    admin, app = _keys(cfg)
    with serve(cfg) as s:
        r = httpx.post(s.url + "/v1/load_lora_adapter", headers={"Authorization": f"Bearer {admin}"},
                       json={"lora_name": "c", "lora_path": str(adapters["c"])})  # fmt: skip
        assert r.status_code == 200, r.text
        ai = openai.OpenAI(base_url=s.url + "/v1", api_key=app)
        order = [*"abc"] * 4
        with ThreadPoolExecutor(3) as pool:  # three at once over two slots: some wait for a slot
            answers = list(pool.map(lambda name: _chat(ai, name), order))
        assert answers == [references[n] for n in order]
        assert len({references[n] for n in "abc"} | {references["base"]}) == 4  # each adapter tells
        cache = s.gateway.models["base"].client.shared.adapters
        engine = s.gateway.models["base"].client.shared.engine
        assert len(engine.lora_names()) <= 2 and set(cache.resident) == engine.lora_names()
        metrics = httpx.get(s.url + "/metrics").text
        assert _metric(metrics, "tuneloop_lora_adapters", state="registered") == 3
        assert _metric(metrics, "tuneloop_lora_slots") == 2
        assert _metric(metrics, "tuneloop_lora_evictions_total") >= 1
        assert _metric(metrics, "tuneloop_lora_evictions_total") == cache.evictions
        assert 'vllm:lora_requests_info{max_lora="2"' in metrics


def test_adapters_the_engine_cannot_serve_are_4xx_naming_the_problem(
    serve, tiny_llama, tiny_model_factory, adapters, tmp_path
):
    # LoRA decode in CUDA graphs (set explicitly on the CPU) holds adapters of rank <= max_lora_rank
    cfg = _config(tiny_llama, False, {"lora_in_graph": True, "max_lora_rank": 4})
    admin, app = _keys(cfg)
    wider = make_adapter(tiny_model_factory("llama", hidden_size=96), tmp_path / "wider", seed=3)
    with serve(cfg) as s:

        def load(key: str = admin, **body) -> httpx.Response:
            body = {"lora_name": "x", "lora_path": str(adapters["a"])} | body
            return httpx.post(
                s.url + "/v1/load_lora_adapter", json=body, headers={"Authorization": f"Bearer {key}"}
            )

        r = load(lora_path=str(adapters["rank8"]))
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "rank 8" in message and "4" in message and "engine.max_lora_rank of model 'base'" in message
        assert r.json()["error"]["param"] == "lora_path"

        missing = load(lora_path=str(tmp_path / "nope"))
        assert missing.status_code == 400 and str(tmp_path / "nope") in missing.json()["error"]["message"]
        full = load(lora_path=str(tiny_llama))
        assert full.status_code == 400 and "not a LoRA adapter" in full.json()["error"]["message"]
        other = load(lora_path=str(wider))
        assert other.status_code == 400, other.text
        assert "does not fit the base model" in other.json()["error"]["message"]
        assert "[4, 96]" in other.json()["error"]["message"]  # the tensor's shape and the base's
        unknown = load(base_model="nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "base_model"

        # without the admin scope: 403 before the body is read (a malformed one too)
        assert load(key=app).status_code == 403
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            r = httpx.post(s.url + path, content=b"{not json", headers={"Authorization": f"Bearer {app}"})
            assert r.status_code == 403, r.text
        assert httpx.post(s.url + "/v1/unload_lora_adapter", json={"lora_name": "x"}).status_code == 401

        assert load().status_code == 200  # a rank-4 adapter fits the slots
        assert s.gateway.models["base"].client.shared.engine.lora_names() == {"x"}


def test_a_config_adapter_above_the_slot_rank_stops_the_start_naming_the_entry(tiny_llama, adapters):
    cfg = _config(tiny_llama, False, {"lora_in_graph": True, "max_lora_rank": 4}, big=adapters["rank8"])
    with pytest.raises(
        TuneloopError, match=r"model 'big': adapter .* has rank 8, above .* slot rank of 4"
    ) as e:
        build_clients(cfg)
    assert "engine.max_lora_rank of model 'base'" in e.value.hint


def test_a_request_waits_for_a_busy_slot_within_its_time_and_evicts_the_least_recently_used(
    tiny_llama, adapters
):
    # the cache on a real engine with one slot: b waits while a is held, gets a's slot once a is idle
    shared = SharedEngine.load(tiny_llama, kv_cache_gib=0.02, max_loras=1)
    cache = shared.adapters
    a, b = cache.register("a", adapters["a"]), cache.register("b", adapters["b"])

    async def scenario() -> None:
        await cache.acquire(a)
        with pytest.raises(TimeoutError):  # a request's timeout ends the wait: nothing leaks
            await asyncio.wait_for(cache.acquire(b), 0.3)
        assert cache.waiting == 0 and dict(cache.busy) == {a: 1} and list(cache.resident) == [a]
        waiter = asyncio.create_task(cache.acquire(b))
        await asyncio.sleep(0.1)
        assert not waiter.done() and cache.waiting == 1 and cache.wanted == {b}
        cache.release(a)
        await asyncio.wait_for(waiter, 10)
        assert list(cache.resident) == [b] and cache.evictions == 1 and dict(cache.busy) == {b: 1}
        cache.release(b)
        await cache.unregister(b)  # idle: its slot is freed now
        for _ in range(100):
            if not cache.resident and not shared.engine.lora_names():
                break
            await asyncio.sleep(0.02)
        assert not cache.resident and shared.engine.lora_names() == set()
        with pytest.raises(Exception, match="unloaded"):
            await cache.acquire(b)

    try:
        asyncio.run(scenario())
    finally:
        shared.engine.shutdown()


def test_a_reloaded_adapter_version_takes_the_only_slot_and_the_old_one_is_dropped(
    serve, tiny_llama, adapters, references, tmp_path
):
    current = tmp_path / "support"
    current.symlink_to(adapters["a"])
    cfg = _config(tiny_llama, False, {"max_loras": 1}, support=current)
    cfg.auth.enabled = False
    with serve(cfg) as s:
        ai = openai.OpenAI(base_url=s.url + "/v1", api_key="none")
        assert _chat(ai, "support") == references["a"]
        current.unlink()
        current.symlink_to(adapters["b"])
        assert httpx.post(s.url + "/admin/reload").json() == {"reloaded": ["support"]}
        assert _chat(ai, "support") == references["b"]
        shared = s.gateway.models["base"].client.shared
        new, deadline = s.gateway.models["support"].client.lora, time.monotonic() + 10
        while set(shared.adapters.registered) != {new} and time.monotonic() < deadline:  # old one retired
            time.sleep(0.05)
        assert set(shared.adapters.registered) == {new} and shared.engine.lora_names() == {new} != {"support"}
        assert shared.adapters.evictions == 1  # the new version's warm-up took the old one's slot
