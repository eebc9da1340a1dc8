"""ONNX export of a causal LM with its KV cache (`tuneloop.models.onnx` runs it on ONNX Runtime).

The graph takes `input_ids`, `attention_mask` and `past_key_values.{i}.key|value` and returns
`logits` and `present.{i}.key|value`, the layout onnxruntime-genai and optimum use, so prefill is
the same graph with an empty (length-0) past and decoding feeds the presents back in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import missing_extra
from tuneloop.export.runners import cache_argument
from tuneloop.models.formats import ONNX_FILE, ONNX_META

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

OPSET = 18


def _kv_shape(config: PretrainedConfig) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from an HF config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", heads), head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def _wrapper(model: PreTrainedModel) -> torch.nn.Module:
    """A module with flat tensor inputs/outputs (ONNX has no cache objects)."""
    import torch
    from transformers import DynamicCache

    cache_arg = cache_argument(model)

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache(config=self.model.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            # positions count real tokens only, so left padding gives the same positions as none
            position_ids = (torch.cumsum(attention_mask, -1) - 1).clamp(min=0)[:, past[0].shape[2] :]
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_arg: cache},
            )
            cache_out = getattr(out, cache_arg)
            present = [t for layer in cache_out.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return CausalLMWithPast().eval()


def export_onnx(model: PreTrainedModel, out: Path) -> Path:
    """Export `model` (fp32, CPU) to `out/model.onnx` with dynamic batch, sequence and past length."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        import torch
    except ImportError:
        raise missing_extra("onnxscript", "export") from None
    model = model.to("cpu", torch.float32).eval()
    layers, heads, dim = _kv_shape(model.config)
    ids = torch.ones(1, 4, dtype=torch.long)
    # example past of length 3: a length-0 or 1 example would be specialized as a constant
    past = tuple(torch.zeros(1, heads, 3, dim) for _ in range(2 * layers))
    mask = torch.ones(1, 7, dtype=torch.long)
    batch, seq = torch.export.Dim("batch", max=256), torch.export.Dim("sequence", max=32768)
    past_len = torch.export.Dim("past_sequence", max=32768)
    shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
        "past": tuple({0: batch, 2: past_len} for _ in range(2 * layers)),
    }
    inputs, outputs = io_names(layers)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            _wrapper(model),
            (ids, mask, *past),
            str(out / ONNX_FILE),
            input_names=inputs,
            output_names=outputs,
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            external_data=True,
            verbose=False,
        )
    meta = {"layers": layers, "kv_heads": heads, "head_dim": dim, "opset": OPSET, "inputs": inputs}
    (out / ONNX_META).write_text(json.dumps(meta, indent=2))
    model.config.save_pretrained(out)
    return out / ONNX_FILE
