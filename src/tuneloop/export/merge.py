"""Merge a LoRA adapter into its base model (PEFT `merge_and_unload`), giving a plain HF model.

The merged weights are W + (alpha / r) * B @ A per adapted layer, computed in float32 so the
merged model's logits match base + adapter to float rounding (the oracle test checks that), then
stored in the base's own dtype: merging a bf16 base must not double the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError
from tuneloop.models.load import load_reference
from tuneloop.models.resolve import read_config

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def merge_adapter(
    adapter_path: Path, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load base + adapter and merge; returns (model, tokenizer, details for the report)."""
    import torch

    loaded = load_reference(str(adapter_path), device)
    if not hasattr(loaded.model, "merge_and_unload"):
        raise TuneloopError(f"'{adapter_path}' is not a LoRA adapter", hint="--merge needs an adapter folder")
    peft_config = loaded.model.peft_config["default"]
    model = loaded.model.to(torch.float32).merge_and_unload(safe_merge=True)
    stored = stored_dtype(Path(loaded.base)) if loaded.base else None
    if stored is not None:  # merged in fp32, shipped in the base's own dtype (a bf16 base stays bf16)
        model = model.to(stored)
    details = {
        "base": loaded.base,
        "peft_type": str(getattr(peft_config, "peft_type", "LORA")),
        "rank": getattr(peft_config, "r", None),
        "alpha": getattr(peft_config, "lora_alpha", None),
        "target_modules": sorted(getattr(peft_config, "target_modules", None) or []),
        "dtype": str(stored or torch.float32).removeprefix("torch."),
    }
    return model.eval(), loaded.tokenizer, details


def stored_dtype(base: Path) -> torch.dtype | None:
    """The dtype the base model's weights are stored in (config.json `dtype`/`torch_dtype`)."""
    import torch

    name = read_config(base).get("dtype") or read_config(base).get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None
