"""Model shapes for memory planning: known Llama-family sizes offline, or read from an HF config.json.

A `ModelShape` holds only what memory depends on (widths, depth, heads, vocabulary, tying) and
answers parameter counts per module, so `plan` never needs the weights themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.resolve import resolve_model

LINEAR_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only Llama-family model (Llama, Mistral, Qwen2, SmolLM)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    qkv_bias: bool = False

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.hd

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q": (h, self.q_dim),
            "k": (h, self.kv_dim),
            "v": (h, self.kv_dim),
            "o": (self.q_dim, h),
            "gate": (h, i),
            "up": (h, i),
            "down": (i, h),
        }

    @property
    def linear_params_per_layer(self) -> int:
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linear_shapes().values()) + bias

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the lm_head when it is a separate matrix."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return self.num_layers * 2 * self.hidden_size + self.hidden_size

    @property
    def num_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer + self.embedding_params + self.norm_params

    @property
    def largest_linear(self) -> int:
        return max(a * b for a, b in self.linear_shapes().values())


def _shape(name: str, h: int, i: int, layers: int, heads: int, kv: int, vocab: int, max_pos: int, **kw: Any):
    return ModelShape(name, h, i, layers, heads, kv, vocab, max_pos, **kw)


KNOWN_SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _shape("smollm2-135m", 576, 1536, 30, 9, 3, 49152, 8192, tie_word_embeddings=True),
        _shape("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, 32768, tie_word_embeddings=True, qkv_bias=True),
        _shape("llama-3.2-1b", 2048, 8192, 16, 32, 8, 128256, 131072, tie_word_embeddings=True, head_dim=64),
        _shape("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 4096),
        _shape("mistral-7b", 4096, 14336, 32, 32, 8, 32000, 32768),
        _shape("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, 131072, qkv_bias=True),
        _shape("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 8192),
        _shape("llama-3-70b", 8192, 28672, 80, 64, 8, 128256, 8192),
    )
}

# Hub ids (and common spellings) that name the same architecture; instruct variants share the shape.
_ALIASES = {
    "huggingfacetb/smollm2-135m": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-0.5b-instruct": "qwen2.5-0.5b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "meta-llama/llama-3.2-1b-instruct": "llama-3.2-1b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-7b-chat-hf": "llama-2-7b",
    "mistralai/mistral-7b-v0.1": "mistral-7b",
    "mistralai/mistral-7b-instruct-v0.1": "mistral-7b",
    "mistralai/mistral-7b-instruct-v0.2": "mistral-7b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/meta-llama-3-8b-instruct": "llama-3-8b",
    "meta-llama/llama-3.1-8b": "llama-3-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3-8b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    "meta-llama/meta-llama-3-70b-instruct": "llama-3-70b",
    "llama-3.1-8b": "llama-3-8b",
    "llama3-8b": "llama-3-8b",
    "smollm2": "smollm2-135m",
}


def known_shape(ref: str) -> ModelShape | None:
    """The shape for a known name or hub id (case-insensitive), or None."""
    key = ref.strip().lower()
    key = _ALIASES.get(key, key)
    return KNOWN_SHAPES.get(key)


def shape_from_config(config: dict[str, Any], name: str = "local") -> ModelShape:
    """Read a ModelShape from an HF config.json dict (Llama, Mistral, Qwen2/3 and alike)."""
    cfg = config.get("text_config", config)  # multimodal wrappers nest the language model
    try:
        heads = int(cfg["num_attention_heads"])
        return ModelShape(
            name=name,
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab_size=int(cfg["vocab_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim"),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TuneloopError(
            f"config.json of '{name}' lacks a field plan needs: {e}",
            hint="plan understands decoder-only Llama-family configs (hidden_size, num_hidden_layers, ...)",
        ) from None


def shape_from_folder(folder: Path) -> ModelShape:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TuneloopError(f"cannot read {path}: {e}", hint="point --model at an HF model folder") from None
    return shape_from_config(config, name=folder.name)


def resolve_shape(ref: str) -> ModelShape:
    """A known name / hub id, a local HF folder, or a reference `tuneloop.models.resolve` knows."""
    shape = known_shape(ref)
    if shape is not None:
        return shape
    folder = Path(ref).expanduser()
    if (folder / "config.json").is_file():
        return shape_from_folder(folder)
    return shape_from_folder(Path(resolve_model(ref).path))  # raises ModelNotFoundError itself
