"""The Llama family natively (Llama 2/3, Mistral, Qwen2/2.5/3, SmolLM): flat tokens in, paged KV cache.

Weights load from HF safetensors; q/k/v and gate/up are fused into one matmul each at load time.
Numerics follow transformers' implementation (fp32 RMSNorm, its own rotary embedding class), so
greedy decoding matches `generate` token for token.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tuneloop.engine.attention import AttentionMetadata, paged_attention

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    cos, sin = cos[:, None, :], sin[:, None, :]  # (N, 1, D)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# On the GPU each of these is a chain of small elementwise kernels (RMSNorm alone is seven); at
# decode time their launches cost as much as the matmuls. torch.compile fuses each into one
# Triton kernel (as nano-vllm does). CPU keeps the eager versions: identical numerics to transformers.
_FUSED: dict[str, Any] = {}


def compile_fused_ops() -> None:
    if not _FUSED:
        for fn in (rms_norm, apply_rotary, silu_and_mul):
            _FUSED[fn.__name__] = torch.compile(fn, dynamic=True)


def _op(fn: Any, x: torch.Tensor) -> Any:
    return _FUSED.get(fn.__name__, fn) if x.is_cuda else fn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _op(rms_norm, x)(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.h = cfg.num_attention_heads
        self.kvh = cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.h
        bias = getattr(cfg, "attention_bias", False) or cfg.model_type == "qwen2"
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.h + 2 * self.kvh) * self.d, bias=bias)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        self.scale = self.d**-0.5

    def forward(self, x, cos, sin, kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata, lora=None):
        qkv = self.qkv_proj(x)  # (N, (H + 2 KVH) D)
        if lora is not None:
            qkv = lora.add("qkv_proj", x, qkv)
        q, k, v = qkv.split([self.h * self.d, self.kvh * self.d, self.kvh * self.d], dim=-1)
        q, k, v = q.view(-1, self.h, self.d), k.view(-1, self.kvh, self.d), v.view(-1, self.kvh, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _op(apply_rotary, q)(q, k, cos, sin)
        out = paged_attention(q, k, v, kv[0], kv[1], meta, self.scale).reshape(-1, self.h * self.d)
        y = self.o_proj(out)
        return lora.add("o_proj", out, y) if lora is not None else y


class MLP(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.i = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.i, bias=False)
        self.down_proj = nn.Linear(self.i, cfg.hidden_size, bias=False)

    def forward(self, x, lora=None):
        gate_up = self.gate_up_proj(x)
        if lora is not None:
            gate_up = lora.add("gate_up_proj", x, gate_up)
        h = _op(silu_and_mul, gate_up)(gate_up)
        y = self.down_proj(h)
        return lora.add("down_proj", h, y) if lora is not None else y


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv, meta, lora=None):
        at = lora.at(self) if lora is not None else None
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, meta, at)
        return x + self.mlp(self.post_attention_layernorm(x), at)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        if cfg.model_type not in SUPPORTED:
            raise ValueError(f"model_type {cfg.model_type!r} is not in the native Llama family {SUPPORTED}")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = _hf_rotary(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: list,
        meta: AttentionMetadata,
        lora=None,
    ):
        x = self.embed_tokens(input_ids)  # (N, hidden)
        cos, sin = self.rotary(x, positions[None])  # HF's own rotary class: identical to generate()
        cos, sin = cos[0], sin[0]
        for layer, kv in zip(self.layers, kv_cache, strict=True):
            x = layer(x, cos, sin, kv, meta, lora)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def _hf_rotary(cfg: Any) -> nn.Module:
    """transformers' rotary embedding for this model type (handles llama3 / yarn / dynamic scaling)."""
    module = importlib.import_module(f"transformers.models.{cfg.model_type}.modeling_{cfg.model_type}")
    cls = next(getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding"))
    return cls(config=cfg)


# ---------------------------------------------------------------- loading


def load_llama(folder: str | Path, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    from transformers import AutoConfig  # heavy (~1.5 s): imported when a model is loaded

    folder = Path(folder)
    cfg = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    model.load_state_dict(_fuse(state, cfg), strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"weights missing from {folder}: {missing[:5]}")
    model.rotary = _hf_rotary(cfg)  # its buffers were on meta
    model = model.to(device=device, dtype=dtype).eval()
    model.rotary = _hf_rotary(cfg).to(device)  # after the cast: inv_freq stays fp32, as in transformers
    return model


def random_llama(config: dict[str, Any], dtype: torch.dtype, device: str, seed: int = 0) -> LlamaForCausalLM:
    """A native model with random weights (speed does not depend on values): benchmarks only."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(**config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    model.rotary = _hf_rotary(cfg).to(device)  # fp32 inv_freq
    return model.eval()


def _fuse(state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        name = name.removeprefix("model.")
        out[name] = tensor
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{p}self_attn.{x}_proj.{kind}", None) for x in "qkv"]
            if all(t is not None for t in parts):
                out[f"{p}self_attn.qkv_proj.{kind}"] = torch.cat(parts)
        out[f"{p}mlp.gate_up_proj.weight"] = torch.cat(
            [out.pop(f"{p}mlp.gate_proj.weight"), out.pop(f"{p}mlp.up_proj.weight")]
        )
    if "lm_head.weight" not in out and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def is_native(folder: str | Path) -> bool:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return cfg.get("model_type") in SUPPORTED
