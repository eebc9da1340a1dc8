"""What kind of model folder a reference points at, and which commands can use which kind.

`tuneloop export` writes folders that are not all plain HF folders (ONNX graphs, packed int4
weights, torchao/bitsandbytes weights) and training writes LoRA adapters. Every command that takes
a model reference checks the folder's format here first, so a format it cannot use fails by name,
with what to use instead, before anything loads (not deep inside `from_pretrained`).

    format      ask chat eval   serve   train         export  plan
    hf           x   x    x       x       x             x       x
    quantized    x   x    x       -       lora/qlora    -       x
    int4         x   x    x       -       -             -       -
    onnx         x*  x*   x       -       -             -       -
    adapter      x   x    x       x       -             x       -
    gguf         x+  x+   x+      -       -             -       -
    (* greedy decoding only; + through transformers' GGUF loader, which dequantizes to float:
     the file's quality, not llama.cpp's speed)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from tuneloop.errors import TuneloopError

Format = Literal["hf", "quantized", "int4", "onnx", "adapter", "gguf"]

# The files `tuneloop export` writes (tuneloop.export.onnx / .quantize write these names, and
# tuneloop.models.onnx / .int4 read them).
ONNX_FILE = "model.onnx"
ONNX_META = "onnx_config.json"
INT4_MANIFEST = "int4.json"
INT4_WEIGHTS = "model.int4.safetensors"
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"  # Ollama's recipe next to the GGUF

DESCRIPTION: dict[Format, str] = {
    "hf": "a Hugging Face model folder",
    "quantized": "a quantized export (torchao/bitsandbytes weights)",
    "int4": "a packed int4 export",
    "onnx": "an ONNX export",
    "adapter": "a LoRA adapter",
    "gguf": "a GGUF export (llama.cpp / Ollama)",
}

_FROM_SOURCE = "the full-precision folder it was exported from (its registry parent)"

SUPPORTED: dict[str, tuple[Format, ...]] = {
    "ask": ("hf", "quantized", "int4", "onnx", "adapter", "gguf"),
    "chat": ("hf", "quantized", "int4", "onnx", "adapter", "gguf"),
    "eval": ("hf", "quantized", "int4", "onnx", "adapter", "gguf"),
    "serve": ("hf", "adapter"),
    "train": ("hf", "quantized"),
    "export": ("hf", "adapter"),
    "plan": ("hf", "quantized"),
}

# What to do instead, per (command, format) that is refused.
INSTEAD: dict[tuple[str, Format], str] = {
    ("serve", "onnx"): f"serve {_FROM_SOURCE}; run the ONNX graph with onnxruntime, or measure it "
    "with `tuneloop eval`",
    ("serve", "int4"): f"serve {_FROM_SOURCE}; try the int4 folder with `tuneloop ask` or `tuneloop eval`",
    ("serve", "quantized"): f"serve {_FROM_SOURCE}: the engine loads bf16 weights (and quantizes them "
    "to int8 itself with --quantization int8)",
    ("train", "onnx"): f"train from {_FROM_SOURCE}",
    ("train", "int4"): f"train from {_FROM_SOURCE} (or a quantized int8 export with method=lora)",
    ("train", "adapter"): "train on top of a full model: merge the adapter first "
    "(`tuneloop export ADAPTER --merge`), or train from its base model",
    ("export", "onnx"): f"export from {_FROM_SOURCE}",
    ("export", "int4"): f"export from {_FROM_SOURCE}",
    ("export", "quantized"): f"export from {_FROM_SOURCE}",
    ("plan", "onnx"): f"plan {_FROM_SOURCE}",
    ("plan", "int4"): f"plan {_FROM_SOURCE}",
    ("serve", "gguf"): "run it with Ollama (`ollama create NAME -f Modelfile` in its folder) or llama.cpp's "
    "llama-server and add that as an OpenAI-compatible upstream; or serve " + _FROM_SOURCE,
    ("train", "gguf"): f"train from {_FROM_SOURCE}",
    ("export", "gguf"): f"export from {_FROM_SOURCE}",
    ("plan", "gguf"): f"plan {_FROM_SOURCE}",
    ("plan", "adapter"): "plan its base model (adapter_config.json's base_model_name_or_path)",
}


def folder_format(path: str | Path) -> Format:
    """onnx | int4 | gguf | adapter | quantized (torchao/bnb through config.json) | hf."""
    path = Path(path)
    if (path / ONNX_FILE).is_file():
        return "onnx"
    if (path / GGUF_FILE).is_file():
        return "gguf"
    if (path / INT4_MANIFEST).is_file():
        return "int4"
    config = path / "config.json"
    if (path / "adapter_config.json").is_file() and not config.is_file():
        return "adapter"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        data = {}  # a broken config.json is the loader's error to report, with its own words
    return "quantized" if isinstance(data, dict) and data.get("quantization_config") else "hf"


def require_format(path: str | Path, ref: str, command: str) -> Format:
    """The folder's format, or a clear error when `tuneloop COMMAND` cannot use it."""
    fmt = folder_format(path)
    if fmt not in SUPPORTED[command]:
        raise TuneloopError(
            f"'{ref}' is {DESCRIPTION[fmt]}, which `tuneloop {command}` does not support",
            hint=INSTEAD.get((command, fmt)),
        )
    return fmt


_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken")
_NEEDS: dict[Format, list[tuple[str, tuple[str, ...]]]] = {
    "hf": [("weight files", _WEIGHTS), ("tokenizer files", _TOKENIZER)],
    "quantized": [("weight files", _WEIGHTS), ("tokenizer files", _TOKENIZER)],
    "int4": [("weight files", (INT4_WEIGHTS,)), ("tokenizer files", _TOKENIZER)],
    "onnx": [("graph settings", (ONNX_META,)), ("tokenizer files", _TOKENIZER)],
    "adapter": [("adapter weights", ("adapter_model.safetensors", "adapter_model.bin"))],
    "gguf": [("GGUF file", (GGUF_FILE,))],  # config and tokenizer are read from the GGUF itself
}


def require_complete(path: str | Path, ref: str) -> Format:
    """The folder's format, after checking it holds what loading it needs (a readable config.json,
    weights, a tokenizer): a half-copied folder fails here by name, not inside transformers."""
    path = Path(path)
    fmt = folder_format(path)
    config = path / ("adapter_config.json" if fmt == "adapter" else "config.json")
    try:
        if not isinstance(json.loads(config.read_text()), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise TuneloopError(
            f"'{ref}': {config.name} cannot be read ({e})", hint="copy the folder again, or re-export it"
        ) from None
    for what, patterns in _NEEDS[fmt]:
        if not any(next(path.glob(p), None) for p in patterns):
            raise TuneloopError(
                f"'{ref}' ({DESCRIPTION[fmt]}) has no {what}: none of {', '.join(patterns)} in {path}",
                hint="point at a complete folder as save_pretrained / `tuneloop export` writes it",
            )
    return fmt
