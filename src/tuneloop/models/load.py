"""Load any model reference, in any format `tuneloop export` writes: the one loader.

`load_reference(ref)` resolves a reference (folder, store name, hub id, registry reference), checks
that the folder holds what loading needs, and loads it; `load_folder(path)` loads a folder that is
already resolved. Each format loads the way its users run it:

    hf         transformers in the device's dtype (`models.loading.load_model`)
    adapter    the base (adapter_config.json's `base_model_name_or_path`, resolved like any other
               reference, so a run folder loads as-is) with the PEFT adapter on top
    quantized  torchao/bitsandbytes weights through `from_pretrained` (their own dtype and placement)
    int4       packed int4 weights on torchao's CPU kernel (`models.int4`)
    onnx       an ONNX Runtime session called like an HF model (`models.onnx`)
    gguf       transformers' GGUF loader: config, tokenizer and weights from the .gguf alone (`models.gguf`)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.models.formats import Format, folder_format, require_complete
from tuneloop.models.gguf import load_gguf_model, load_gguf_tokenizer
from tuneloop.models.int4 import load_int4
from tuneloop.models.loading import CausalLM, load_model, load_tokenizer, pick_device
from tuneloop.models.onnx import OnnxCausalLM
from tuneloop.models.resolve import resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    ref: str
    path: Path
    model: CausalLM
    tokenizer: PreTrainedTokenizerBase
    base: str | None = None  # the base model's folder when `ref` is an adapter
    format: Format = "hf"


def load_reference(ref: str | Path, device: str = "auto", *, pull: bool = False) -> LoadedModel:
    """Any model reference, in any format (see `tuneloop.models.formats`); `pull=True` pulls a
    built-in model (or an adapter's built-in base) that is not in the store yet."""
    resolved = resolve_model(str(ref), pull=pull)
    device = pick_device(device)
    if folder_format(resolved.path) != "adapter":  # an adapter is checked with its base, on loading
        require_complete(resolved.path, str(ref))
    return load_folder(resolved.path, device, ref=str(ref), pull=pull)


def load_folder(
    path: Path, device: str = "auto", *, ref: str | None = None, pull: bool = False
) -> LoadedModel:
    """A resolved folder of any format; `ref` is what the user called it (for messages)."""
    path, device = Path(path), pick_device(device)
    ref = ref or str(path)
    fmt = folder_format(path)
    if fmt == "adapter":
        return _load_adapter(ref, path, device, pull)
    if fmt == "onnx":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        model: CausalLM = OnnxCausalLM(path, providers)
    elif fmt == "int4":
        model = load_int4(path)
    elif fmt == "gguf":
        return LoadedModel(ref, path, load_gguf_model(path, device), load_gguf_tokenizer(path), format=fmt)
    elif fmt == "quantized":
        from transformers import AutoModelForCausalLM

        # torchao and bitsandbytes folders carry their own dtype and placement rules
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map=device).eval()
    else:
        model = load_model(path, device)
    return LoadedModel(ref, path, model, load_tokenizer(path), format=fmt)


def _load_adapter(ref: str, path: Path, device: str, pull: bool) -> LoadedModel:
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
