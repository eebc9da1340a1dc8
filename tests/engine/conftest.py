"""Engine test fixtures beside the shared ones (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 folder: a family the engine runs through its transformers fallback."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "gpt2"
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=256, bos_token_id=1,
                        eos_token_id=2)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_vocab_llama(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama over the default model's tokenizer (49152 tokens): its outputs decode to
    text that guided-decoding tests can parse, while a step still costs milliseconds."""
    from tuneloop.models.tiny import build_config

    default = json.loads((default_model / "config.json").read_text())
    config = build_config("llama", vocab_size=default["vocab_size"], bos_token_id=1, eos_token_id=2,
                          pad_token_id=2, hidden_size=32, intermediate_size=64)  # fmt: skip
    return _save_random(config, default_model, tmp_path_factory.mktemp("tiny") / "llama-smollm2-vocab")


@pytest.fixture(scope="session")
def smollm2_vocab_gpt2(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 (the transformers fallback runner) over the default model's tokenizer."""
    from transformers import GPT2Config

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=49152, n_positions=512, bos_token_id=1,
                        eos_token_id=2)  # fmt: skip
    return _save_random(config, default_model, tmp_path_factory.mktemp("tiny") / "gpt2-smollm2-vocab")


def _save_random(config, tokenizer_from: Path, folder: Path) -> Path:
    import shutil

    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, folder / name)
    return folder
