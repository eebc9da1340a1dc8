"""Engine test fixtures beside the shared ones (tests/conftest.py)."""

from __future__ import annotations

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
