"""serve.yaml's `engine:` block: every EngineConfig setting, validated, overridable, reaching the engine."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app as cli
from tuneloop.cli.serve import _config
from tuneloop.config import load_config
from tuneloop.engine.config import EngineConfig
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.serve import ServeConfig
from tuneloop.serve.backends import engine_process
from tuneloop.serve.config import EngineSettings


def test_every_engine_setting_is_in_serve_yaml():
    engine = {f.name for f in dataclasses.fields(EngineConfig)} - {"model"}
    assert set(EngineSettings.model_fields) == engine


def write(tmp_path, text: str):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_engine_block_is_validated_with_file_line_and_key(tmp_path):
    path = write(tmp_path, "models:\n  - name: m\n    model: x\n    engine:\n      max_num_seq: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, path)
    assert f"{path}:5" in e.value.message
    assert "models[0].engine.max_num_seq" in e.value.message and "max_num_seqs" in e.value.message
    path = write(tmp_path, "models:\n  - name: m\n    model: x\n    engine:\n      max_num_seqs: 0\n")
    with pytest.raises(ConfigError, match=r"models\[0\]\.engine\.max_num_seqs"):
        load_config(ServeConfig, path)
    path = write(tmp_path, "models:\n  - name: m\n    model: x\n    engine: {prefill_attention: flash}\n")
    with pytest.raises(ConfigError, match="prefill_attention"):
        load_config(ServeConfig, path)


def test_overrides_reach_a_list_entry(tmp_path):
    path = write(tmp_path, "models:\n  - name: m\n    model: x\n")
    cfg = load_config(
        ServeConfig, path, ["models.0.engine.max_num_seqs=128", "models.0.engine.enforce_eager=true"]
    )
    assert cfg.models[0].engine_kwargs() == {"max_num_seqs": 128, "enforce_eager": True}
    with pytest.raises(ConfigError, match=r"has 1 entries; there is no 'models\.3'"):
        load_config(ServeConfig, path, ["models.3.engine.max_num_seqs=1"])
    with pytest.raises(ConfigError, match="'models' is a list"):
        load_config(ServeConfig, path, ["models.engine.max_num_seqs=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'models\.0\.engine\.max_num_seqs'"):
        load_config(ServeConfig, path, ["models.0.engine.max_num_seq=1"])


def test_shorthands_and_conflicts():
    m = {"name": "m", "model": "x", "kv_cache_gib": 2.0, "engine": {"max_loras": 4}}
    assert load_config(ServeConfig, {"models": [m]}).models[0].engine_kwargs() == {
        "kv_cache_gib": 2.0,
        "max_loras": 4,
    }
    clash = {**m, "engine": {"kv_cache_gib": 3.0}}
    with pytest.raises(ConfigError, match=r"kv_cache_gib is 2\.0 but engine\.kv_cache_gib is 3\.0"):
        load_config(ServeConfig, {"models": [clash]})
    upstream = {"name": "u", "upstream": "http://x/v1", "engine": {"max_num_seqs": 4}}
    with pytest.raises(ConfigError, match="apply to local models"):
        load_config(ServeConfig, {"models": [upstream]})
    eager = {"name": "m", "model": "x", "engine": {"lora_in_graph": True, "enforce_eager": True}}
    with pytest.raises(ConfigError, match="enforce_eager"):
        load_config(ServeConfig, {"models": [eager]})


def test_model_flags_and_overrides_compose():
    entry = {"name": "m", "model": "x", "engine": {"max_num_seqs": 8}}
    cfg = _config(None, entry, ["models.0.engine.max_num_batched_tokens=64"], None, None, True)
    assert cfg.models[0].engine_kwargs() == {"max_num_seqs": 8, "max_num_batched_tokens": 64}


def test_engine_flags_without_model_are_refused(tmp_path):
    result = CliRunner().invoke(
        cli, ["serve", "--max-num-seqs", "8", "--config", str(tmp_path / "none.yaml")]
    )
    assert result.exit_code == 2
    assert "apply to --model" in result.output


def test_engine_process_is_on_for_cuda_only():
    assert engine_process(True, "cpu") is True
    assert engine_process(False, "cuda") is False
    assert engine_process(None, "cpu") is False
    with pytest.raises(TuneloopError, match="no CUDA GPU"):
        engine_process(None, "cuda")  # asked for CUDA on a machine without one: said, not ignored


def test_a_served_engine_runs_with_its_block_and_admits_as_many_as_it_batches(serve, tiny_llama):
    entry = {"name": "tiny", "model": str(tiny_llama), "engine": {"kv_cache_gib": 0.02, "max_num_seqs": 3,
                                                                 "max_num_batched_tokens": 48}}  # fmt: skip
    config = load_config(ServeConfig, {"models": [entry], "auth": {"enabled": False}, "warmup": False})
    with serve(config) as server:
        served = server.gateway.models["tiny"]
        engine = served.client.shared.engine.engine
        assert (engine.config.max_num_seqs, engine.config.max_num_batched_tokens) == (3, 48)
        assert served.gate.max_concurrency == 3  # max_concurrency unset: the engine's batch
        r = httpx.post(
            f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}
        )
        assert r.status_code == 200, r.text
