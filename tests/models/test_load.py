"""`tuneloop.models.load`: one loader for every reference and folder format (adapters on their base).

The export formats (int8, int4, ONNX) are loaded in tests/models/test_formats.py and tests/export/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tuneloop.errors import ModelNotFoundError, TuneloopError
from tuneloop.models.load import load_folder, load_reference
from tuneloop.models.loading import load_model

IDS = torch.tensor([[1, 17, 42, 99, 7]])


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on `tiny_llama` with random B matrices (so it changes the logits), no tokenizer."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(load_model(tiny_llama, "cpu"), config).save_pretrained(str(out))
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_a_folder_reference_loads_as_hf(tiny_llama: Path) -> None:
    loaded = load_reference(str(tiny_llama), "cpu")
    assert (loaded.format, loaded.path, loaded.base) == ("hf", tiny_llama.resolve(), None)
    assert loaded.ref == str(tiny_llama) and loaded.tokenizer.chat_template
    torch.testing.assert_close(_logits(loaded.model), _logits(load_model(tiny_llama, "cpu")))


def test_an_adapter_loads_on_its_base_with_the_base_tokenizer(adapter: Path, tiny_llama: Path) -> None:
    loaded = load_reference(str(adapter), "cpu")
    assert loaded.format == "adapter" and Path(loaded.base) == tiny_llama.resolve()
    assert not torch.allclose(_logits(loaded.model), _logits(load_model(tiny_llama, "cpu")), atol=1e-4)
    assert len(loaded.tokenizer) == len(load_folder(tiny_llama, "cpu").tokenizer)
    same = load_folder(adapter, "cpu")  # an already resolved folder: the same model
    torch.testing.assert_close(_logits(same.model), _logits(loaded.model))


def test_an_adapter_with_unreadable_config_names_the_file(adapter: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(TuneloopError, match=r"broken/adapter_config.json is not valid JSON"):
        load_reference(str(broken), "cpu")


def test_an_adapter_without_its_base_says_which_key_is_missing(adapter: Path, tmp_path: Path) -> None:
    orphan = tmp_path / "orphan"
    shutil.copytree(adapter, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TuneloopError, match="does not say its base model") as err:
        load_reference(str(orphan), "cpu")
    assert "base_model_name_or_path" in (err.value.hint or "")


def test_an_adapter_whose_base_is_gone_fails_on_the_base_reference(adapter: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="no-such-base' does not exist"):
        load_reference(str(moved), "cpu")


def test_an_unknown_device_is_refused_before_loading(tiny_llama: Path) -> None:
    with pytest.raises(TuneloopError, match="unknown device 'tpu'"):
        load_reference(str(tiny_llama), "tpu")
