"""`tuneloop plan`: component math, fit search, advice, the CLI and refusal of impossible numbers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.resources.plan import (
    GiB,
    PlanRequest,
    activation_bytes,
    components,
    largest_micro_batch,
    layer_activation_bytes,
    lora_param_count,
    make_plan,
    parse_memory,
    total_bytes,
    weight_bytes,
)
from tuneloop.resources.shapes import known_shape, resolve_shape, shape_from_folder

LLAMA3_8B = known_shape("llama-3-8b")
runner = CliRunner()


def req(**kw) -> PlanRequest:
    return PlanRequest(**{"model": "llama-3-8b", "gpu_memory": 80 * GiB, **kw})


def test_llama3_8b_param_count_is_8_03b_and_hub_id_maps_to_it():
    assert abs(LLAMA3_8B.num_params - 8.03e9) / 8.03e9 < 0.01
    assert resolve_shape("meta-llama/Meta-Llama-3-8B") == LLAMA3_8B


def test_lora_param_count_matches_peft(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=8, target_modules=targets)
    )
    trainable, total = model.get_nb_trainable_parameters()
    shape = shape_from_folder(tiny_llama)
    assert lora_param_count(shape, 8, ["q", "k", "v", "o", "gate", "up", "down"]) == trainable
    assert shape.num_params == total - trainable


def test_checkpointing_lowers_activations():
    on = activation_bytes(LLAMA3_8B, req(gradient_checkpointing=True), 1)[0]
    off = activation_bytes(LLAMA3_8B, req(gradient_checkpointing=False), 1)[0]
    assert on < off / 10


def test_qlora_weights_are_about_a_third_of_lora_weights():
    lora, qlora = weight_bytes(LLAMA3_8B, req(method="lora")), weight_bytes(LLAMA3_8B, req(method="qlora"))
    assert 0.3 < qlora / lora < 0.4  # NF4 linears, 16-bit embeddings + lm_head


def test_more_gpus_shard_full_finetuning_states():
    one = {c.name: c.bytes for c in components(LLAMA3_8B, req(method="full"), 1)}
    eight = {c.name: c.bytes for c in components(LLAMA3_8B, req(method="full", gpus=8), 1)}
    assert eight["optimizer states"] * 8 == pytest.approx(one["optimizer states"], rel=1e-6)
    assert eight["gradients"] < one["gradients"] / 7


def test_largest_micro_batch_fits_and_one_more_does_not():
    r = req(seq_len=4096, gradient_checkpointing=True)
    best = largest_micro_batch(LLAMA3_8B, r, 80 * GiB)
    assert best >= 1
    assert total_bytes(LLAMA3_8B, r, best) <= 80 * GiB < total_bytes(LLAMA3_8B, r, best + 1)


def test_gradient_accumulation_is_global_over_micro_times_gpus():
    plan = make_plan(LLAMA3_8B, req(micro_batch=2, gpus=4, global_batch=64))
    assert plan.grad_accum == 8


def test_full_8b_on_one_80gb_gpu_advises_lora_or_more_gpus():
    plan = make_plan(LLAMA3_8B, req(method="full", master_weights=True))  # 16 B/param
    assert plan.fits is False
    assert any("--method lora" in a for a in plan.advice)
    assert any("GPUs" in a for a in plan.advice)


def test_parse_memory_units():
    assert parse_memory("80GiB") == 80 * GiB
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("24G") == 24 * GiB
    with pytest.raises(TuneloopError):
        parse_memory("lots")


def test_activation_model_matches_saved_tensor_bytes_on_a_tiny_llama(tiny_model_factory):
    """The per-layer coefficients equal what autograd really saves (bf16 base, fp32 LoRA)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    saved = {}
    for layers in (1, 2):
        path = tiny_model_factory("llama", num_hidden_layers=layers, intermediate_size=160)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa")
        model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        saved[layers] = _saved_bytes(model, torch.randint(0, 100, (2, 32)))
    per_token = (saved[2] - saved[1]) / 64
    shape = shape_from_folder(path)
    assert per_token == layer_activation_bytes(shape, PlanRequest(lora_rank=8))


def _saved_bytes(model, ids) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for k, n in storages.items() if k not in params)


# ---------------------------------------------------------------- CLI


def test_cli_json_on_a_tiny_model_folder(tiny_llama):
    result = runner.invoke(
        app, ["plan", str(tiny_llama), "--seq-len", "128", "--gpu-memory", "1GiB", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fits"] is True
    assert data["max_micro_batch"] >= 1
    assert {c["name"] for c in data["components"]} >= {"weights", "LoRA params", "activations"}


def test_cli_table_says_whether_it_fits():
    result = runner.invoke(app, ["plan", "llama-3-8b", "--method", "qlora", "--gpu-memory", "24GiB"])
    assert result.exit_code == 0, result.output
    assert "fits" in result.output and "largest micro-batch" in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--seq-len", "0"], "--seq-len"),
        (["--micro-batch", "0"], "--micro-batch"),
        (["--gpus", "0"], "--gpus"),
        (["--lora-rank", "-1"], "--lora-rank"),
        (["--seq-len", "100000"], "--seq-len"),
        (["--gpu-memory", "eighty"], "--gpu-memory"),
        (["--micro-batch", "3", "--global-batch", "16"], "--global-batch"),
        (["--lora-targets", "q,banana"], "--lora-targets"),
    ],
)
def test_impossible_numbers_exit_2_naming_the_option(args, named, capsys):
    from tuneloop.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["plan", "llama-3-8b", "--gpu-memory", "80GiB", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        (dict(seq_len=0), "--seq-len"),
        (dict(micro_batch=-2), "--micro-batch"),
        (dict(gpus=0), "--gpus"),
        (dict(lora_rank=0), "--lora-rank"),
        (dict(seq_len=9000), "--seq-len"),
        (dict(micro_batch=3, global_batch=16), "--global-batch"),
    ],
)
def test_validation_messages_name_the_option(kw, named):
    with pytest.raises(TuneloopError) as exc:
        make_plan(LLAMA3_8B, req(**kw))
    assert named in exc.value.message
