"""Shared fixtures: an isolated TUNELOOP_HOME per test and tiny random Llama-family models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
