"""Base + LoRA versions share one engine; an adapter is a served name, and a canary variant."""

from __future__ import annotations

import time

import httpx
import pytest
import torch

from tuneloop.serve import ServeConfig


def make_adapter(base, out, seed: int, rank: int = 4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():  # PEFT starts B at zero: randomize so the adapter changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


# the engine in the server process, or in its own (adapters then load and unload through its pipe)
@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_base_and_adapter_share_one_engine_and_adapters_reload(serve, tiny_llama, tmp_path, engine_process):
    current = tmp_path / "support"
    current.symlink_to(make_adapter(tiny_llama, tmp_path / "v1", seed=1))
    cfg = ServeConfig.model_validate(
        {
            "models": [
                {
                    "name": "base",
                    "model": str(tiny_llama),
                    "kv_cache_gib": 0.02,
                    "engine_process": engine_process,
                },
                {"name": "base-alias", "model": str(tiny_llama)},  # same engine, warmed up concurrently
                {"name": "support", "model": str(tiny_llama), "lora": str(current)},
            ],
            "routes": [
                {
                    "name": "bot",
                    "variants": [{"model": "base", "weight": 0}, {"model": "support", "weight": 1}],
                }
            ],
            "auth": {"enabled": False},
        }
    )
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}

    def answer(s, model: str) -> str:
        return httpx.post(s.url + "/v1/completions", json={**body, "model": model}).json()["choices"][0][
            "text"
        ]

    with serve(cfg) as s:
        models = s.gateway.models
        assert models["base"].client.shared is models["support"].client.shared
        base, v1 = answer(s, "base"), answer(s, "support")
        assert v1 != base and answer(s, "bot") == v1
        current.unlink()
        current.symlink_to(make_adapter(tiny_llama, tmp_path / "v2", seed=2))
        assert httpx.post(s.url + "/admin/reload").json() == {"reloaded": ["support"]}
        assert s.gateway.models["support"].client.shared is models["base"].client.shared  # no second base
        v2 = answer(s, "support")
        assert v2 not in (v1, base) and answer(s, "base") == base
        engine = models["base"].client.shared.engine
        assert (type(engine).__name__ == "EngineProcess") == engine_process
        new, deadline = s.gateway.models["support"].client.lora, time.monotonic() + 10
        while engine.lora_names() != {new} and time.monotonic() < deadline:  # the old version is retired
            time.sleep(0.05)
        assert engine.lora_names() == {new}
