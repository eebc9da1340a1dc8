"""What a model is: architecture, parameter count, context, tokenizer, provenance — without loading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from tuneloop.models.resolve import resolve_model


def count_parameters(folder: Path) -> int | None:
    """Parameters from safetensors headers (no tensor is read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                shape = st.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def describe(ref: str) -> dict[str, Any]:
    resolved = resolve_model(ref)
    folder = resolved.path
    info: dict[str, Any] = {"reference": ref, "kind": resolved.kind, "path": str(folder)}
    if (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        info.update(
            architecture=(cfg.get("architectures") or ["?"])[0],
            model_type=cfg.get("model_type"),
            parameters=count_parameters(folder),
            layers=cfg.get("num_hidden_layers"),
            hidden_size=cfg.get("hidden_size"),
            attention_heads=cfg.get("num_attention_heads"),
            kv_heads=cfg.get("num_key_value_heads"),
            vocab_size=cfg.get("vocab_size"),
            context_length=cfg.get("max_position_embeddings"),
            dtype=cfg.get("dtype") or cfg.get("torch_dtype"),
            tied_embeddings=cfg.get("tie_word_embeddings"),
        )
    if (folder / "adapter_config.json").is_file():
        acfg = json.loads((folder / "adapter_config.json").read_text())
        info.update(
            adapter=acfg.get("peft_type"), base_model=acfg.get("base_model_name_or_path"), rank=acfg.get("r")
        )
    info["chat_template"] = (folder / "chat_template.jinja").is_file() or _template_in_tokenizer_config(
        folder
    )
    info["size_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    info["lineage"] = resolved.lineage
    info["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return info


def _template_in_tokenizer_config(folder: Path) -> bool:
    path = folder / "tokenizer_config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("chat_template"))
