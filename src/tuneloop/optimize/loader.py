"""Load anything `tuneloop export` writes (or reads): HF folder, adapter, torchao/bnb, int4, ONNX.

One entry point, so the report's load time is the time a user of that folder would wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.models.loading import load_model, load_tokenizer
from tuneloop.optimize.onnx import OnnxCausalLM, is_onnx_folder
from tuneloop.optimize.quantize import is_int4_folder, load_int4


def folder_format(path: Path) -> str:
    """onnx | int4 | adapter | quantized (torchao/bnb via config) | hf."""
    path = Path(path)
    if is_onnx_folder(path):
        return "onnx"
    if is_int4_folder(path):
        return "int4"
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return "adapter"
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    return "quantized" if config.get("quantization_config") else "hf"


def load_any(path: Path, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a folder of any export format."""
    kind = folder_format(path)
    if kind == "onnx":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        return OnnxCausalLM(path, providers), load_tokenizer(path)
    if kind == "int4":
        return load_int4(path), load_tokenizer(path)
    if kind == "adapter":
        from tuneloop.evaluation.loader import load_for_eval

        loaded = load_for_eval(str(path), device)
        return loaded.model, loaded.tokenizer
    if kind == "quantized":
        from transformers import AutoModelForCausalLM

        # torchao and bitsandbytes folders carry their own dtype and placement rules
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map=device)
        return model.eval(), load_tokenizer(path)
    model = load_model(path, device)
    if _pattern(path) == "2:4" and device.startswith("cuda"):
        from tuneloop.optimize.prune import to_semi_structured

        to_semi_structured(model)  # sparse tensor cores; the file holds the dense 2:4 weights
    return model, load_tokenizer(path)


def _pattern(path: Path) -> str | None:
    file = Path(path) / "prune.json"
    return json.loads(file.read_text()).get("pattern") if file.is_file() else None
