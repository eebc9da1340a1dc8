"""--merge: the merged model is the oracle's base + adapter, and the export loads and generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuneloop.errors import TuneloopError
from tuneloop.export.merge import merge_adapter
from tuneloop.export.pipeline import ExportOptions, run_export
from tuneloop.export.runners import greedy, runner_for
from tuneloop.models.formats import folder_format
from tuneloop.models.load import load_folder, load_reference

IDS = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])


def test_merged_logits_equal_base_plus_adapter(tiny_adapter: Path) -> None:
    with torch.no_grad():
        oracle = load_reference(str(tiny_adapter), "cpu").model(IDS).logits
        merged, _, details = merge_adapter(tiny_adapter)
        got = merged(IDS).logits
    base = load_folder(Path(details["base"]), "cpu").model
    with torch.no_grad():
        assert not torch.allclose(base(IDS).logits, oracle, atol=1e-3)  # the adapter does something
    assert torch.allclose(got, oracle, atol=1e-5, rtol=1e-4)
    assert not hasattr(merged, "peft_config")
    assert details["rank"] == 4


def test_merge_export_is_a_plain_folder_that_generates(tiny_adapter: Path, tmp_path: Path, fast) -> None:
    report = run_export(str(tiny_adapter), ExportOptions(merge=True, out=tmp_path / "m", workload=fast))
    out = Path(report.output)
    assert folder_format(out) == "hf"
    assert not (out / "adapter_config.json").exists()
    assert (out / "export_report.json").is_file() and (out / "export_report.md").is_file()
    loaded = load_folder(out, "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    assert len(greedy(runner_for(model), tokenizer("hello")["input_ids"], 5).tokens) == 5
    # before = base + adapter (what must be shipped); merged = base-sized
    assert report.before.size_bytes > report.after.size_bytes > 0
    assert report.steps[0]["step"] == "merge"
    # same function, so perplexity is equal up to float rounding
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=1e-4)


def test_quantizing_an_adapter_without_merge_is_refused(tiny_adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="LoRA adapter") as e:
        run_export(str(tiny_adapter), ExportOptions(quantize="int8", out=tmp_path / "q"))
    assert "--merge" in (e.value.hint or "")
    assert not (tmp_path / "q").exists()


def test_merge_of_a_full_model_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="--merge needs a LoRA adapter"):
        run_export(str(tiny_llama), ExportOptions(merge=True, out=tmp_path / "m"))
