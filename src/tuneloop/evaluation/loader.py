"""Loading what `tuneloop eval` is pointed at: a full model folder, or a PEFT adapter on its base.

An adapter folder's base comes from adapter_config.json's `base_model_name_or_path`, resolved like
any other model reference (a store name, a folder, a hub id), so a run folder evaluates as-is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.models.formats import Format, folder_format, require_complete
from tuneloop.models.loading import load_model, load_tokenizer, pick_device
from tuneloop.models.resolve import resolve_model


@dataclass
class LoadedModel:
    ref: str
    path: Path
    model: Any
    tokenizer: Any
    base: str | None = None  # the base model's folder when `ref` is an adapter
    format: Format = "hf"


def load_for_eval(ref: str | Path, device: str = "auto", *, pull: bool = False) -> LoadedModel:
    """Any model reference, in any format `tuneloop export` writes (see `tuneloop.models.formats`)."""
    resolved = resolve_model(str(ref), pull=pull)
    device = pick_device(device)
    if folder_format(resolved.path) == "adapter":
        return _load_adapter(str(ref), resolved.path, device, pull)
    fmt = require_complete(resolved.path, str(ref))
    if fmt in ("onnx", "int4", "quantized"):
        from tuneloop.export.loader import load_any

        # what `tuneloop export` wrote (ONNX Runtime, packed int4, torchao/bnb) evaluates as it is served
        model, tokenizer = load_any(resolved.path, device)
        return LoadedModel(str(ref), resolved.path, model, tokenizer, format=fmt)
    model = load_model(resolved.path, device)
    return LoadedModel(str(ref), resolved.path, model, load_tokenizer(resolved.path))


def _load_adapter(ref: str, path: Path, device: str, pull: bool = False) -> LoadedModel:
    try:
        from peft import PeftModel
    except ImportError:
        raise missing_extra("peft", "train") from None
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except ValueError as e:
        raise TuneloopError(f"{path / 'adapter_config.json'} is not valid JSON: {e}") from None
    base_ref = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base_ref:
        raise TuneloopError(
            f"adapter '{path}' does not say its base model",
            hint="adapter_config.json needs base_model_name_or_path",
        )
    require_complete(path, ref)
    base = resolve_model(base_ref, pull=pull)
    require_complete(base.path, base_ref)
    model = PeftModel.from_pretrained(load_model(base.path, device), str(path)).to(device).eval()
    # A run folder saves the tokenizer next to the adapter (it may add tokens); else the base's.
    tok_dir = path if (path / "tokenizer_config.json").is_file() else base.path
    return LoadedModel(ref, path, model, load_tokenizer(tok_dir), base=str(base.path), format="adapter")
