"""`NAME@alias` and `NAME/VERSION` wherever a model is taken, and adapters that load through the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneloop import paths
from tuneloop.errors import ModelNotFoundError
from tuneloop.models.load import load_reference
from tuneloop.models.resolve import resolve_model
from tuneloop.models.tiny import build_tiny_model

from .conftest import train_run


def test_resolve_model_takes_both_reference_forms(registry, adapter_run):
    registry.register_run(adapter_run, "acme")
    registry.promote("acme", 1, "production")
    by_alias, by_version = resolve_model("acme@production"), resolve_model("acme/1")
    assert by_alias.kind == by_version.kind == "registry"
    assert by_alias.path == by_version.path and by_alias.is_adapter
    assert by_alias.lineage["registry_version"] == "acme/1"
    assert by_alias.lineage["tuneloop.base"] == "tiny-llama/1"
    base = resolve_model("tiny-llama/1")
    assert (base.path / "config.json").is_file() and not base.is_adapter
    with pytest.raises(ModelNotFoundError, match="no alias 'staging'"):
        resolve_model("acme@staging")


def test_hub_ids_are_not_taken_for_registry_references(registry):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(
            "Qwen/Qwen2.5-0.5B"
        )  # offline in tests: the hub resolver declines, nothing else claims it
    assert "registered" not in str(err.value)


def test_tuneloop_models_imports_without_mlflow():
    code = "import sys, tuneloop.models.resolve; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_find_the_registry_resolver_through_its_entry_point_not_an_import():
    code = (
        "import sys, tuneloop.models.resolve as r; "
        "assert not [m for m in sys.modules if m.startswith('tuneloop.registry')], 'imported'; "
        "from tuneloop.registry.resolver import resolve_reference; "
        "assert r.plugin_resolvers() == (resolve_reference,), r.plugin_resolvers()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # a stale install lacks the entry point: `pip install -e .`


def test_a_registry_reference_without_the_registry_resolver_says_so(monkeypatch):
    """A stale install (or a stale src/*.egg-info on PYTHONPATH) hides the entry point: the error names
    that, not "unknown model"."""
    from tuneloop.errors import ModelNotFoundError
    from tuneloop.models import resolve as r

    monkeypatch.setattr(r, "plugin_resolvers", lambda: ())
    for ref in ("acme@production", "acme/3"):
        with pytest.raises(ModelNotFoundError, match="no model resolver is installed") as err:
            r.resolve_model(ref)
        assert "egg-info" in err.value.hint
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        r.resolve_model("no-such-model")


@pytest.mark.parametrize("ref", ["./acme/1", "acme", "Qwen/Qwen2.5-0.5B", "/models/acme", "acme@"])
def test_the_registry_resolver_declines_other_references(ref):
    from tuneloop.registry.resolver import resolve_reference

    assert resolve_reference(ref) is None


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_loads_from_the_registry_after_its_base_and_run_are_gone(registry, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = build_tiny_model(tmp_path / "base", family="llama")
    run = train_run(base, tmp_path / "run")
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "model").eval()
    expected = logits(original, ids)
    plain = logits(AutoModelForCausalLM.from_pretrained(base).eval(), ids)
    assert not torch.allclose(plain, expected)  # the trained adapter changes the output
    info = registry.register_run(run, "acme")
    registry.promote("acme", info.version, "production")
    stored = json.loads((info.path / "adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == "base/1"  # a registry reference, not a path or hub id
    shutil.rmtree(base)
    shutil.rmtree(run)
    shutil.rmtree(paths.home() / "registry")  # fetch everything again from the artifact store
    loaded = load_reference("acme@production", device="cpu")
    assert Path(loaded.base) == resolve_model("base/1").path
    torch.testing.assert_close(logits(loaded.model, ids), expected, rtol=0, atol=0)


def test_a_full_fine_tuning_run_registers_as_a_model_with_base_lineage(registry, tiny_llama, tmp_path):
    from tuneloop.models.store import sha256_file

    run = train_run(tiny_llama, tmp_path / "run", method="full", max_steps=2)
    info = registry.register_run(run, "acme-full")
    assert info.tags["tuneloop.kind"] == "model" and "tuneloop.base" not in info.tags
    assert info.tags["tuneloop.base_model.sha256"] == sha256_file(tiny_llama / "model.safetensors")
    assert registry.names() == ["acme-full"]  # a full model needs no base in the registry
    assert resolve_model("acme-full/1").path.joinpath("model.safetensors").is_file()


def test_training_on_a_registry_base_reuses_that_version(registry, tiny_llama, tmp_path):
    registry.register_folder(tiny_llama, "house-base")
    run = train_run("house-base/1", tmp_path / "run", max_steps=2)
    lineage = json.loads((run / "run.json").read_text())["base_model"]
    assert lineage["reference"] == "house-base/1" and lineage["registry_version"] == "house-base/1"
    info = registry.register_run(run, "acme")
    assert info.tags["tuneloop.base"] == "house-base/1"
    assert info.tags["tuneloop.base_model.registry_version"] == "house-base/1"
    assert not any(k.startswith("tuneloop.base_model.tuneloop.") for k in info.tags)
    assert registry.names() == ["acme", "house-base"]
