"""Padding-free packed attention: a flattened micro-batch trains exactly like its documents one by one."""

from __future__ import annotations

import inspect
from itertools import pairwise

import pytest
import torch

from tuneloop.models import varlen as varlen_kernel
from tuneloop.train import attention, objectives
from tuneloop.train.batching import collate
from tuneloop.train.dataset import IGNORE, Example, pack

# lengths 1 and 2 on purpose: a one-token document and the shortest one with a label
DOCS = [
    Example([5, 9, 13, 40, 41, 7], [IGNORE, IGNORE, 13, 40, 41, 7]),
    Example([7], [7]),
    Example([8, 99], [8, 99]),
    Example(list(range(20, 37)), list(range(20, 37))),
    Example([3, 4, 5], [IGNORE, 4, 5]),
]


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config).float().eval()  # eval: no dropout, deterministic


def loss_and_grads(model, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, n = objectives.token_loss_sum(model, batch)
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}


def unpacked(model, docs: list[Example]) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """The oracle: each document alone, plain SDPA, losses and gradients summed."""
    model.set_attn_implementation("sdpa")
    total, count, grads = torch.zeros(()), 0, None
    for d in docs:
        loss, n, g = loss_and_grads(model, collate([d], 0))
        total, count = total + loss, count + n
        grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
    return total, count, grads


def padding_free(model, examples: list[Example]):
    attention.use_padding_free(model)
    try:
        return loss_and_grads(model, collate(examples, 0, padding_free=True))
    finally:
        model.set_attn_implementation("sdpa")


def assert_same(a, b) -> None:
    assert a[1] == b[1]
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------- exactness


def test_padding_free_loss_and_gradients_equal_documents_run_one_by_one(model):
    assert_same(padding_free(model, DOCS), unpacked(model, DOCS))


def test_already_packed_examples_flatten_to_the_same_result(model):
    packed = pack(DOCS, max_length=12)
    assert len(packed) > 1 and any(p.segments and len(p.segments) > 1 for p in packed)
    assert_same(padding_free(model, packed), unpacked(model, DOCS))


def test_a_batch_of_one_document_equals_the_plain_forward(model):
    doc = DOCS[3]
    assert_same(padding_free(model, [doc]), unpacked(model, [doc]))


def test_a_batch_of_one_single_token_document_has_no_loss_and_no_error(model):
    loss, n, _ = padding_free(model, [Example([7], [7])])
    assert n == 0 and float(loss) == 0.0


def test_gradient_checkpointing_gives_the_same_gradients(model):
    expected = padding_free(model, DOCS)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()  # checkpointing only runs in training mode; dropout is 0 in this config
    try:
        assert_same(padding_free(model, DOCS), expected)
    finally:
        model.activation_checkpointing_disable()
        model.eval()


def test_the_varlen_kwargs_of_the_batch_give_the_same_logits_as_position_ids_alone(model):
    batch = collate(DOCS, 0, padding_free=True)
    attention.use_padding_free(model)
    try:
        with torch.no_grad():
            by_positions = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            by_kwargs = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(by_kwargs, by_positions)


def test_inference_mode_scoring_matches_sdpa(model):
    batch = collate(DOCS, 0, padding_free=True)
    with torch.inference_mode():
        expected = torch.cat([model(**collate([d], 0)).logits[0] for d in DOCS])
        attention.use_padding_free(model)
        try:
            got = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        finally:
            model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- old batches still work


def test_right_padded_and_dense_mask_batches_match_sdpa(model):
    rows = collate(DOCS[:3], 0)  # 2D right-padded mask
    dense = collate(pack(DOCS, max_length=12), 0)  # 4D block mask
    with torch.no_grad():
        expected = [model(**b).logits for b in (rows, dense)]
        attention.use_padding_free(model)
        try:
            got = [model(**b).logits for b in (rows, dense)]
        finally:
            model.set_attn_implementation("sdpa")
    valid = rows["attention_mask"].bool()
    torch.testing.assert_close(got[0][valid], expected[0][valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_left_padding_is_refused(model):
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    attention.use_padding_free(model)
    try:
        with pytest.raises(ValueError, match="right padding"), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        model.set_attn_implementation("sdpa")


def test_transformers_builds_no_mask_for_padding_free_batches(model):
    from transformers.masking_utils import create_causal_mask

    batch = collate(DOCS, 0, padding_free=True)
    attention.use_padding_free(model)
    try:
        embeds = model.get_input_embeddings()(batch["input_ids"])
        mask = create_causal_mask(model.config, embeds, None, None, position_ids=batch["position_ids"])
    finally:
        model.set_attn_implementation("sdpa")
    assert mask is None


def test_use_padding_free_reaches_the_model_inside_a_peft_wrapper(model):
    peft = pytest.importorskip("peft")
    import copy

    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert attention.use_padding_free(wrapped) == attention.NAME
    assert wrapped.get_base_model().config._attn_implementation == attention.NAME
    batch = collate(DOCS, 0, padding_free=True)
    with torch.no_grad():
        loss, n = objectives.token_loss_sum(wrapped, batch)
    assert n == unpacked(model, DOCS)[1] and torch.isfinite(loss)


# ---------------------------------------------------------------- the collated batch


def test_collate_padding_free_is_one_row_with_positions_restarting_per_document():
    batch = collate([pack(DOCS[:2], 16)[0], DOCS[2]], pad_id=0, padding_free=True)
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                          "max_length_q", "max_length_k"}  # fmt: skip
    assert batch["input_ids"].tolist() == [[5, 9, 13, 40, 41, 7, 7, 8, 99]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 0, 1]]
    # each document's first label is masked: nothing learns across a boundary
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 13, 40, 41, 7, IGNORE, IGNORE, 99]]
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["cu_seq_lens_q"].tolist() == [0, 6, 7, 9]
    assert batch["max_length_q"] == 6


def test_default_collate_is_unchanged():
    batch = collate(pack(DOCS[:2], 16), pad_id=0)
    assert batch["attention_mask"].shape == (1, 1, 7, 7)


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (Example([1, 2, 3], [1, 2]), "3 input ids but 2 labels"),
        (Example([1, 2, 3], [1, 2, 3], [0, 1, 0], [2, 2]), "segments"),
        (Example([1, 2, 3], [1, 2, 3], [0, 1, 2], [2, 1]), "position_ids do not restart"),
        (Example([], []), "no tokens"),
    ],
)
def test_inconsistent_examples_are_refused_with_a_clear_error(example, message):
    with pytest.raises(ValueError, match=message):
        collate([DOCS[0], example], 0, padding_free=True)


def test_cu_seq_lens_that_do_not_cover_the_batch_are_refused(model):
    batch = collate(DOCS, 0, padding_free=True)
    attention.use_padding_free(model)
    try:
        with pytest.raises(ValueError, match="must rise strictly"), torch.no_grad():
            model(input_ids=batch["input_ids"], cu_seq_lens_q=torch.tensor([0, 3, 5], dtype=torch.int32))
    finally:
        model.set_attn_implementation("sdpa")


# ---------------------------------------------------------------- the CUDA kernel


def _fake_varlen(style: str):
    """A CPU stand-in for torch's varlen_attn with the signature of one release, strict like it."""

    def run(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale=None, gqa=False):
        assert q.shape[1] == k.shape[1] or gqa, "Hkv < Hq without enable_gqa"
        assert cu_q.dtype == torch.int32 and max_q == int(cu_q.diff().max())
        out = []
        for s, e in pairwise(cu_q.tolist()):
            qs, ks, vs = (x[s:e].transpose(0, 1)[None] for x in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa
            )
            out.append(o[0].transpose(0, 1))
        return torch.cat(out)

    if style == "2.10":

        def varlen_attn(
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None
        ):
            return run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal)

    elif style == "2.11":

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1)):  # fmt: skip
            return run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size == (-1, 0), scale)

    else:

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1), enable_gqa=False, seqused_k=None):  # fmt: skip
            causal = window_size == (-1, 0)
            return run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, enable_gqa)

    return varlen_attn


@pytest.mark.parametrize("style", ["2.10", "2.11", "2.12"])
def test_varlen_call_adapts_to_each_torch_signature(style, monkeypatch):
    import torch.nn.attention.varlen as varlen

    fake = _fake_varlen(style)
    monkeypatch.setattr(varlen, "varlen_attn", fake)
    monkeypatch.setattr(varlen_kernel, "VARLEN_PARAMS", frozenset(inspect.signature(fake).parameters))
    torch.manual_seed(0)
    lengths = [1, 6, 3]
    q, k, v = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    seg = attention.Segments(torch.tensor([0, 1, 7, 10], dtype=torch.int32), max(lengths))
    scale = 0.3  # not 1/sqrt(8): 2.10 has no scale argument, so the query is pre-scaled
    got = attention._varlen(q, k, v, seg, scale)
    torch.testing.assert_close(got, attention._per_document(q, k, v, seg, scale, 0.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn needs CUDA")
def test_varlen_kernel_matches_per_document_sdpa_on_cuda():
    if varlen_kernel.VARLEN_PARAMS is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    torch.manual_seed(0)
    lengths = [1, 37, 200, 5, 64]
    n, hq, hkv, d = sum(lengths), 8, 2, 64
    q = torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    positions = torch.tensor([[i for L in lengths for i in range(L)]], device="cuda")
    module = torch.nn.Module()
    out, _ = attention.packed_attention_forward(module, q, k, v, None, position_ids=positions)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    # the oracle: each document alone through SDPA in fp32
    ref, start = [], 0
    for L in lengths:
        s = slice(start, start + L)
        ref.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[:, :, s].float(), k[:, :, s].float(), v[:, :, s].float(), is_causal=True, enable_gqa=True
            ).transpose(1, 2)
        )
        start += L
    ref = torch.cat(ref, dim=1)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.float(), r.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn needs CUDA")
def test_bf16_model_on_cuda_trains_like_documents_one_by_one(model):
    import copy

    gpu = copy.deepcopy(model).to("cuda", torch.bfloat16)
    gpu.zero_grad(set_to_none=True)
    docs = [Example(list(range(1, 100)), list(range(1, 100))), *DOCS]
    on_gpu = [
        {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in collate([d], 0).items()} for d in docs
    ]
    expected = sum(float(objectives.token_loss_sum(gpu, b)[0]) for b in on_gpu)
    attention.use_padding_free(gpu)
    batch = {
        k: v.cuda() if isinstance(v, torch.Tensor) else v
        for k, v in collate(docs, 0, padding_free=True).items()
    }
    loss, _ = objectives.token_loss_sum(gpu, batch)
    loss.backward()  # the varlen backward runs
    assert float(loss) == pytest.approx(expected, rel=2e-2)
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
