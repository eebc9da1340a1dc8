"""Load anything `tuneloop export` writes (or reads): HF folder, adapter, torchao/bnb, int4, ONNX.

One entry point, so the report's load time is the time a user of that folder would wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.export.onnx import OnnxCausalLM
from tuneloop.export.quantize import load_int4
from tuneloop.models.formats import folder_format  # re-exported: the engine and eval import it from here
from tuneloop.models.loading import load_model, load_tokenizer


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
        from tuneloop.export.prune import to_semi_structured

        to_semi_structured(model)  # sparse tensor cores; the file holds the dense 2:4 weights
    return model, load_tokenizer(path)


def _pattern(path: Path) -> str | None:
    file = Path(path) / "prune.json"
    return json.loads(file.read_text()).get("pattern") if file.is_file() else None
