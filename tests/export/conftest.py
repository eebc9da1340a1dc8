"""Fixtures for export tests: a tiny LoRA adapter with non-zero weights, and a fast workload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tuneloop.export.measure import BUILTIN_TEXT
from tuneloop.models.loading import load_model, load_tokenizer

# Small enough that a before/after measurement takes well under a second on a tiny model.
FAST = {"repeats": 1, "latency_tokens": 4, "max_new_tokens": 6, "max_samples": 4, "load_tries": 1}


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on `tiny_llama` whose B matrices are random (not zero), so merging changes outputs."""
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    model = get_peft_model(load_model(tiny_llama, "cpu"), config)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(out))
    load_tokenizer(tiny_llama).save_pretrained(str(out))
    return out


@pytest.fixture
def fast() -> dict[str, int]:
    return dict(FAST)


@pytest.fixture(scope="session")
def trained_tiny(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_llama` fitted for a few seconds to the built-in perplexity text, so damage shows as a
    perplexity increase (a random model's perplexity is ~vocab size whatever is done to it)."""
    torch.manual_seed(0)
    model, tokenizer = load_model(tiny_llama, "cpu").train(), load_tokenizer(tiny_llama)
    batch = tokenizer(BUILTIN_TEXT, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(20):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("trained") / "tiny-trained"
    model.eval().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
