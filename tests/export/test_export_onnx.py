"""--onnx: logits match PyTorch with and without past KV, and ONNX greedy equals PyTorch greedy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tuneloop.engine import LLMEngine
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.generate import greedy_kwargs
from tuneloop.export.pipeline import ExportOptions, run_export
from tuneloop.export.runners import OnnxRunner, TorchRunner, greedy
from tuneloop.models.load import load_reference
from tuneloop.models.loading import load_model, load_tokenizer
from tuneloop.models.onnx import OnnxCausalLM

ATOL = 1e-4


@pytest.fixture(scope="module")
def pipeline_export(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """One export through the whole pipeline (exporting takes seconds); the tests share it."""
    fast = {"repeats": 1, "latency_tokens": 4, "max_new_tokens": 6, "load_tries": 1}
    out = tmp_path_factory.mktemp("onnx") / "model"
    return run_export(str(tiny_llama), ExportOptions(onnx=True, out=out, device="cpu", workload=fast))


@pytest.fixture(scope="module")
def exported(pipeline_export, tiny_llama: Path) -> tuple[OnnxCausalLM, object]:
    return OnnxCausalLM(Path(pipeline_export.output)), load_model(tiny_llama, "cpu", dtype=torch.float32)


def test_logits_match_without_past(exported) -> None:
    onnx_model, model = exported
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    got = onnx_model(ids).logits  # batch 2, empty past
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=ATOL)


def test_logits_match_with_past(exported) -> None:
    onnx_model, model = exported
    ids = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(1)).numpy()
    _, past = onnx_model.run(ids[:, :8], np.ones((1, 8), dtype=np.int64), onnx_model.empty_past(1))
    assert past[0].shape[2] == 8  # the present holds the 8 prefill positions
    logits, present = onnx_model.run(ids[:, 8:], np.ones((1, 12), dtype=np.int64), past)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits[:, 8:]
    assert present[0].shape[2] == 12
    assert np.allclose(logits, want.numpy(), atol=ATOL)


def test_onnx_greedy_equals_pytorch_greedy(exported, tiny_llama: Path) -> None:
    onnx_model, model = exported
    prompt = [1, 45, 200, 17, 99, 3]
    want = greedy(TorchRunner(model), prompt, 16).tokens
    got = greedy(OnnxRunner(onnx_model), prompt, 16).tokens
    assert got == want
    assert len(set(want)) > 1  # not a degenerate single-token loop that would match trivially


def test_onnx_export_through_the_pipeline(pipeline_export) -> None:
    report, out = pipeline_export, Path(pipeline_export.output)
    assert report.after.format == "onnx" and report.before.format == "hf"
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    assert report.after.ttft_s > 0 and report.after.per_token_s > 0
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=1e-4)


def test_onnx_with_quantize_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="cannot be combined"):
        run_export(str(tiny_llama), ExportOptions(onnx=True, quantize="int8", out=tmp_path / "o"))


def test_eval_loads_the_onnx_export_and_the_engine_refuses_it(pipeline_export) -> None:
    loaded = load_reference(pipeline_export.output, "cpu")
    assert isinstance(loaded.model, OnnxCausalLM)
    with pytest.raises(ValueError, match="ONNX export"):
        LLMEngine.from_pretrained(pipeline_export.output, kv_cache_gib=0.01)


def test_onnx_generate_equals_hf_generate_on_a_left_padded_batch(exported, tiny_llama: Path) -> None:
    """What `tuneloop eval` calls for task scores: HF's output shape, HF's tokens, pads after EOS."""
    onnx, reference = exported
    tok = load_tokenizer(tiny_llama)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    enc = tok(["hello world, this is longer", "hi"], return_tensors="pt", padding=True)
    kwargs = greedy_kwargs(tok, 6)
    with torch.no_grad():
        want = reference.generate(**enc, **kwargs)
    got = onnx.generate(**enc, **kwargs)
    assert got.shape[0] == 2 and got[:, : want.shape[1]].tolist() == want.tolist()
