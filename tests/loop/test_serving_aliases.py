"""The loop moves `NAME@production` from a full version to an adapter version: a served `model:` entry
following that alias must keep working (the adapter is served on its base's engine)."""

from __future__ import annotations

import httpx

from serve.conftest import run_server
from serve.test_lora import make_adapter
from tuneloop.serve import ServeConfig


def test_an_alias_moving_from_a_full_version_to_an_adapter_is_served_after_reload(
    registry, tiny_llama, tmp_path
):
    registry.register_folder(tiny_llama, "bot")
    registry.register_folder(make_adapter(tiny_llama, tmp_path / "adapter", seed=3), "bot")
    assert registry.version("bot/2").tags["tuneloop.base"] == "bot/1"
    registry.promote("bot", 1, "production")
    cfg = ServeConfig.model_validate({"models": [{"name": "bot", "model": "bot@production", "kv_cache_gib": 0.02}],
                                      "auth": {"enabled": False}, "log": {"enabled": False}})  # fmt: skip
    body = {"model": "bot", "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    with run_server(cfg) as s:
        before = httpx.post(f"{s.url}/v1/completions", json=body, timeout=60)
        registry.promote("bot", 2, "production")
        assert httpx.post(f"{s.url}/admin/reload", timeout=60).json() == {"reloaded": ["bot"]}
        after = httpx.post(f"{s.url}/v1/completions", json=body, timeout=60)
        shared = s.gateway.models["bot"].client.shared
    assert before.headers["x-tuneloop-model-version"] == "bot/1"
    assert after.status_code == 200 and after.headers["x-tuneloop-model-version"] == "bot/2"
    assert after.json()["choices"][0]["text"] != before.json()["choices"][0]["text"]  # the adapter answers
    assert shared.engine.lora_names()  # loaded as a LoRA on the base's engine
