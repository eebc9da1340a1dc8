"""The engine's automatic settings (engine/sizing.py): what a user gets without tuning, per device."""

from __future__ import annotations

import pytest

from tuneloop.engine import LLMEngine
from tuneloop.engine.config import EngineConfig
from tuneloop.engine.sizing import Device, bound_by_cache, describe, resolve

GiB = 2**30
H100 = Device("cuda", 80 * GiB, "NVIDIA H100 80GB HBM3", graphs=True, varlen=True)
A100 = Device("cuda", 80 * GiB, "NVIDIA A100-SXM4-80GB", graphs=True, varlen=True)
L4 = Device("cuda", 24 * GiB, "NVIDIA L4", graphs=True, varlen=True)
CPU = Device("cpu")


def test_large_gpus_get_the_large_step_budget_and_the_fast_paths():
    cfg = resolve(EngineConfig("m"), H100, native=True)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (256, 8192)
    assert cfg.prefill_attention == "varlen"
    assert cfg.lora_in_graph is True


@pytest.mark.parametrize("device", [A100, L4], ids=["a100", "24GiB"])
def test_other_gpus_keep_vllms_smaller_budget(device):
    cfg = resolve(EngineConfig("m"), device, native=True)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (256, 2048)


def test_cpu_defaults():
    cfg = resolve(EngineConfig("m"), CPU, native=True)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (64, 2048)
    assert cfg.prefill_attention == "padded"
    assert cfg.lora_in_graph is False


def test_explicit_settings_are_kept():
    given = EngineConfig("m", max_num_seqs=8, max_num_batched_tokens=512, prefill_attention="padded",
                         lora_in_graph=False)  # fmt: skip
    cfg = resolve(given, H100, native=True)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.prefill_attention, cfg.lora_in_graph) == (
        8, 512, "padded", False,
    )  # fmt: skip
    assert describe(cfg, given) == ""


def test_no_fast_path_where_it_cannot_run():
    eager = EngineConfig("m", enforce_eager=True)
    no_flash = Device("cuda", 80 * GiB, "NVIDIA H100", graphs=False, varlen=False)
    cfg = resolve(eager, no_flash, native=True)
    assert cfg.prefill_attention == "padded" and cfg.lora_in_graph is False
    fallback = resolve(EngineConfig("m"), H100, native=False)  # the transformers fallback
    assert fallback.prefill_attention == "padded" and fallback.lora_in_graph is False


def test_graph_cap_bounds_the_sequences():
    cfg = resolve(EngineConfig("m", max_graph_batch=64), H100, native=True)
    assert cfg.max_num_seqs == 64


def test_a_small_kv_cache_lowers_only_the_automatic_sequence_count():
    given = EngineConfig("m")
    cfg = bound_by_cache(resolve(given, H100, native=True), given, num_blocks=40)
    assert cfg.max_num_seqs == 40
    assert "max_num_seqs=40" in describe(cfg, given)
    pinned = EngineConfig("m", max_num_seqs=100)
    assert bound_by_cache(resolve(pinned, H100, native=True), pinned, num_blocks=40).max_num_seqs == 100


def test_the_engine_runs_with_the_decided_settings(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama, device="cpu", kv_cache_gib=0.01)
    assert engine.config.max_num_seqs == engine.scheduler.max_num_seqs == 64
    assert engine.config.max_num_batched_tokens == engine.scheduler.budget == 2048
    assert engine.config.prefill_attention == "padded"
    assert engine.runner.given.max_num_seqs is None  # what the user set stays visible


def test_bad_values_name_the_setting():
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig("m", max_num_seqs=0)
    with pytest.raises(ValueError, match="prefill_attention"):
        EngineConfig("m", prefill_attention="flash")  # type: ignore[arg-type]
