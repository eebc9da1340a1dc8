"""--quantize int8|int4 on CPU (torchao): smaller on disk, reloads from its folder, generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")

from tuneloop.engine import LLMEngine
from tuneloop.errors import TuneloopError
from tuneloop.export.pipeline import ExportOptions, run_export
from tuneloop.export.runners import greedy, runner_for
from tuneloop.models.formats import folder_format
from tuneloop.models.load import load_folder, load_reference
from tuneloop.models.loading import load_model

IDS = torch.tensor([[1, 17, 42, 99, 7, 256, 3, 11]])


@pytest.mark.parametrize(("method", "fmt", "max_ratio"), [("int8", "quantized", 0.6), ("int4", "int4", 0.6)])
def test_quantized_export_reloads_and_generates(
    tiny_llama: Path, tmp_path: Path, fast, method, fmt, max_ratio
) -> None:
    report = run_export(str(tiny_llama), ExportOptions(quantize=method, out=tmp_path / method, workload=fast))
    out = Path(report.output)
    assert folder_format(out) == fmt
    assert report.after.size_bytes < max_ratio * report.before.size_bytes
    loaded = load_folder(out, "cpu")  # a fresh load from disk, not the object that was saved
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.format == fmt
    linear = model.model.layers[0].mlp.down_proj.weight
    assert type(linear).__name__ in ("Int8Tensor", "Int4OpaqueTensor")
    gen = greedy(runner_for(model), tokenizer("hello world")["input_ids"], 6)
    assert len(gen.tokens) == 6
    reference = load_model(tiny_llama, "cpu")
    with torch.no_grad():
        got, want = model(IDS).logits.float(), reference(IDS).logits
    # quantization error is small against the logits' spread, and int4 is worse than int8 would be
    assert (got - want).abs().max() < 0.25 * want.abs().max()
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=0.05)
    assert report.steps[0]["backend"] == "torchao"


def test_unknown_quantize_method_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="unknown --quantize 'int3'"):
        run_export(str(tiny_llama), ExportOptions(quantize="int3", out=tmp_path / "x"))


def test_eval_loads_an_int4_export_and_the_engine_refuses_it_by_name(
    tiny_llama: Path, tmp_path: Path, fast
) -> None:
    out = Path(
        run_export(str(tiny_llama), ExportOptions(quantize="int4", out=tmp_path / "q", workload=fast)).output
    )
    loaded = load_reference(out, "cpu")  # `tuneloop eval` takes the folder as written by export
    assert type(loaded.model.model.layers[0].mlp.down_proj.weight).__name__ == "Int4OpaqueTensor"
    assert len(greedy(runner_for(loaded.model), loaded.tokenizer("hello")["input_ids"], 3).tokens) == 3
    with pytest.raises(ValueError, match="packed int4 export, which the engine does not serve"):
        LLMEngine.from_pretrained(out, kv_cache_gib=0.01)
