"""The trainer's fast path: fused LM-head loss, selective checkpointing, regional compile, plan's choice."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tuneloop.resources.plan import PlanRequest, activation_bytes, fewest_checkpointed_layers, total_bytes
from tuneloop.resources.shapes import ModelShape
from tuneloop.train import linear_ce, objectives
from tuneloop.train.batching import collate
from tuneloop.train.dataset import IGNORE, Example
from tuneloop.train.model_setup import compile_layers, decoder_layers, set_checkpointing


def tiny(tie: bool = False, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, tie_word_embeddings=tie)  # fmt: skip
    return LlamaForCausalLM(cfg)


def batch_of(vocab: int = 300) -> dict:
    g = torch.Generator().manual_seed(1)
    a = torch.randint(3, vocab, (20,), generator=g).tolist()
    b = torch.randint(3, vocab, (13,), generator=g).tolist()
    # prompt tokens of `b` carry no label: ignored rows must give zero loss and zero gradient
    return collate([Example(a, list(a)), Example(b, [IGNORE] * 5 + b[5:])], pad_id=0)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- the fused loss itself


def test_linear_cross_entropy_equals_cross_entropy_of_full_logits_in_value_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[[0, 5, 36]] = IGNORE
    ref = F.cross_entropy(h @ w.t(), labels, ignore_index=IGNORE, reduction="sum")
    (ref * 0.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    loss = linear_ce.linear_cross_entropy(h, w, labels, chunk=8)  # 5 chunks, the last one short
    (loss * 0.5).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(h.grad, gh, atol=1e-6) and torch.allclose(w.grad, gw, atol=1e-6)
    assert h.grad[0].abs().max() == 0  # an ignored token gets no gradient


def test_linear_cross_entropy_under_no_grad_computes_only_the_loss():
    h, w = torch.randn(10, 8), torch.randn(20, 8)
    labels = torch.randint(0, 20, (10,))
    with torch.no_grad():
        loss = linear_ce.linear_cross_entropy(h, w, labels, chunk=4)
    ref = F.cross_entropy(h @ w.t(), labels, reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and not loss.requires_grad


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="3 hidden states but 4 labels"):
        linear_ce.linear_cross_entropy(torch.randn(3, 8), torch.randn(5, 8), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("tie", [False, True])
def test_fused_token_loss_matches_the_logits_path_for_full_fine_tuning(tie):
    model, batch = tiny(tie), batch_of()
    loss, n = objectives.token_loss_sum(model, batch)
    loss.backward()
    ref = grads(model)
    model.zero_grad(set_to_none=True)
    fused, n2 = objectives.token_loss_sum(model, batch, fused=True)
    fused.backward()
    got = grads(model)
    assert n == n2 and fused.item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(got) == set(ref)  # the head (or tied embedding) gets its gradient through linear_ce
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=2e-5, rtol=1e-4), name
    assert model.lm_head.forward.__func__ is torch.nn.Linear.forward  # the head is restored


def test_fused_loss_with_lora_and_bf16_autocast_is_close_to_the_logits_path():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        tiny().to(torch.bfloat16), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # B = 0 at init would hide gradient differences
    batch = batch_of()
    out = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = objectives.token_loss_sum(model, batch, fused=fused)
        loss.backward()
        out.append((loss.item(), grads(model)))
    (l0, g0), (l1, g1) = out
    assert l1 == pytest.approx(l0, rel=2e-2)
    for name in g0:
        cos = F.cosine_similarity(g0[name].flatten().float(), g1[name].flatten().float(), dim=0)
        assert cos > 0.99, name


def test_models_with_post_processed_logits_keep_the_plain_loss():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, vocab_size=100, final_logit_softcapping=30.0)  # fmt: skip
    assert linear_ce.head_of(Gemma2ForCausalLM(cfg)) is None  # softcapping: the fused loss would be wrong
    assert linear_ce.head_of(tiny()) is not None


# ---------------------------------------------------------------- selective checkpointing, compile


def test_selective_checkpointing_marks_only_the_first_layers_and_keeps_the_gradients():
    model, batch = tiny(layers=3), batch_of()
    objectives.token_loss_sum(model, batch)[0].backward()
    ref = grads(model)
    model.zero_grad(set_to_none=True)
    model.train()
    set_checkpointing(model, 2)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, True, False]
    objectives.token_loss_sum(model, batch)[0].backward()
    for name, g in grads(model).items():
        assert torch.allclose(g, ref[name], atol=1e-6), name


def test_compiled_layers_give_the_eager_loss_and_gradients():
    model, batch = tiny(), batch_of()
    loss, _ = objectives.token_loss_sum(model, batch, fused=True)
    loss.backward()
    ref = grads(model)
    model.zero_grad(set_to_none=True)
    assert compile_layers(model) == 2
    loss2, _ = objectives.token_loss_sum(model, batch, fused=True)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    for name, g in grads(model).items():
        assert torch.allclose(g, ref[name], atol=1e-5, rtol=1e-4), name


# ---------------------------------------------------------------- what plan decides


LLAMA3_8B = ModelShape(name="llama-3-8b", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, vocab_size=128256, max_position_embeddings=8192)  # fmt: skip


def test_fused_loss_removes_the_logits_peak_from_the_plan():
    req = PlanRequest(method="lora", seq_len=2048, micro_batch=2, gradient_checkpointing=False)
    plain = activation_bytes(LLAMA3_8B, req, 2)[1]
    fused = activation_bytes(LLAMA3_8B, req.model_copy(update={"fused": True}), 2)[1]
    assert plain > 4 * 2**30 and fused < 0.3 * plain


def test_plan_checkpoints_the_fewest_layers_that_fit_the_budget():
    req = PlanRequest(method="lora", seq_len=2048, micro_batch=2, fused=True, gradient_checkpointing=False)
    sizes = [total_bytes(LLAMA3_8B, req.model_copy(update={"checkpoint_layers": k})) for k in range(33)]
    assert all(a > b for a, b in itertools.pairwise(sizes))  # each checkpointed layer saves memory
    budget = (sizes[10] + sizes[11]) // 2
    assert fewest_checkpointed_layers(LLAMA3_8B, req, budget) == 11
    assert fewest_checkpointed_layers(LLAMA3_8B, req, sizes[0]) == 0  # everything fits: none
    assert fewest_checkpointed_layers(LLAMA3_8B, req, sizes[32] - 1) is None


# ---------------------------------------------------------------- the trainer end to end


def test_padding_free_fused_training_matches_the_padded_path(tiny_llama, sft_dataset, tmp_path):
    from tuneloop.config import load_config
    from tuneloop.train.config import TrainConfig
    from tuneloop.train.recipe import run

    from .conftest import base_overrides

    def losses(**extra):
        cfg = load_config(
            TrainConfig, None, base_overrides(tiny_llama, sft_dataset, tmp_path / str(extra), **extra)
        )
        return [loss for _, loss in run(cfg).metrics["train_loss"]]

    plain = losses(**{"data.padding_free": "false", "fused_loss": "false"})
    fast = losses(**{"data.padding_free": "true", "fused_loss": "true", "checkpoint_layers": 1})
    assert fast == pytest.approx(plain, rel=1e-4)


def test_auto_checkpointing_asks_plan_for_the_fewest_layers_that_fit(llama3_8b_shape, monkeypatch):
    from tuneloop.config import load_config
    from tuneloop.resources import plan as plan_mod
    from tuneloop.train.config import TrainConfig
    from tuneloop.train.model_setup import Precision, checkpointing_layers

    folder = llama3_8b_shape
    monkeypatch.setattr(plan_mod, "detected_memory", lambda gpus: (80 * 2**30, "Fake 80 GiB GPU"))
    bf16 = Precision("bf16", torch.bfloat16)

    def layers(*overrides):
        cfg = load_config(
            TrainConfig, None, [f"model={folder}", "data.path=x", "data.max_length=2048", *overrides]
        )
        return checkpointing_layers(cfg, str(folder), "cuda", bf16, 1)

    assert layers("batch.micro_batch=1") == 0  # fits the 80 GiB card without any checkpointing
    some = layers("batch.micro_batch=2", "batch.global_batch=16", "memory_budget_gib=36")
    assert 0 < some < 32
    assert (
        layers("batch.micro_batch=2", "batch.global_batch=16", "memory_budget_gib=36", "checkpoint_layers=5")
        == 5
    )
    assert layers("gradient_checkpointing=true") is None  # all, as asked
    cfg = load_config(TrainConfig, None, [f"model={folder}", "data.path=x"])
    assert checkpointing_layers(cfg, str(folder), "cpu", bf16, 1) == 0


def test_equal_length_micro_batches_stay_rows_and_ragged_ones_are_flattened(
    tiny_llama, sft_dataset, tmp_path
):
    from tuneloop.config import load_config
    from tuneloop.train import trainer as trainer_mod
    from tuneloop.train.config import TrainConfig
    from tuneloop.train.recipe import run

    from .conftest import base_overrides

    seen = []
    real = trainer_mod.collate

    def spy(examples, pad_id, padding_free=False):
        seen.append((padding_free, len({len(e.input_ids) for e in examples})))
        return real(examples, pad_id, padding_free=padding_free)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "collate", spy)
        for micro in (1, 4):  # one example: a row as is; four of different lengths: one flat row
            extra = {"data.padding_free": "true", "max_steps": 2, "batch.micro_batch": micro}
            run(
                load_config(
                    TrainConfig, None, base_overrides(tiny_llama, sft_dataset, tmp_path / str(micro), **extra)
                )
            )
    assert {flat for flat, _ in seen} == {True, False}
    assert all(flat == (lengths > 1) for flat, lengths in seen)
