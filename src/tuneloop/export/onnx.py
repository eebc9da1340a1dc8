"""ONNX export of a causal LM with its KV cache, and a greedy runner on ONNX Runtime.

The graph takes `input_ids`, `attention_mask` and `past_key_values.{i}.key|value` and returns
`logits` and `present.{i}.key|value`, the layout onnxruntime-genai and optimum use, so prefill is
the same graph with an empty (length-0) past and decoding feeds the presents back in.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tuneloop.errors import TuneloopError, missing_extra

ONNX_FILE = "model.onnx"
ONNX_META = "onnx_config.json"
OPSET = 18


def _kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from an HF config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", heads), head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def _wrapper(model: Any) -> Any:
    """A module with flat tensor inputs/outputs (ONNX has no cache objects)."""
    import torch
    from transformers import DynamicCache

    from tuneloop.export.runners import cache_argument

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


def export_onnx(model: Any, out: Path) -> Path:
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
            _wrapper(model), (ids, mask, *past), str(out / ONNX_FILE), input_names=inputs,
            output_names=outputs, dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
            external_data=True, verbose=False,
        )  # fmt: skip
    meta = {"layers": layers, "kv_heads": heads, "head_dim": dim, "opset": OPSET, "inputs": inputs}
    (out / ONNX_META).write_text(json.dumps(meta, indent=2))
    model.config.save_pretrained(out)
    return out / ONNX_FILE


def is_onnx_folder(path: Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


class OnnxCausalLM:
    """Runs an exported folder on ONNX Runtime; callable like an HF model for perplexity."""

    def __init__(self, folder: Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime", "export") from None
        if not is_onnx_folder(folder):
            raise TuneloopError(f"'{folder}' has no {ONNX_FILE}", hint="export with `tuneloop export --onnx`")
        self.meta = json.loads((Path(folder) / ONNX_META).read_text())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _torch_threads()  # the same thread budget PyTorch has
        self.session = ort.InferenceSession(
            str(Path(folder) / ONNX_FILE), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.device = "cpu"  # feeds and results are host tensors whatever the provider
        self.config = _config(Path(folder))  # max_position_embeddings, eos ids: what the eval harness reads

    def empty_past(self, batch: int) -> list[Any]:
        import numpy as np

        shape = (batch, self.meta["kv_heads"], 0, self.meta["head_dim"])
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.meta["layers"])]

    def run(self, input_ids: Any, attention_mask: Any, past: list[Any]) -> tuple[Any, list[Any]]:
        """One forward pass on numpy arrays: (logits (B, T, V), presents)."""
        names = self.meta["inputs"]
        feeds = {names[0]: input_ids, names[1]: attention_mask, **dict(zip(names[2:], past, strict=True))}
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def __call__(self, input_ids: Any, attention_mask: Any = None, **_: Any) -> Any:
        """HF-style call on torch tensors without a cache: `.logits` as a torch tensor."""
        import torch

        ids = input_ids.cpu().numpy()
        mask = ids * 0 + 1 if attention_mask is None else attention_mask.cpu().numpy()
        logits, _ = self.run(ids, mask, self.empty_past(ids.shape[0]))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def generate(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 32,
                 pad_token_id: int | None = None, streamer: Any = None, **_: Any) -> Any:  # fmt: skip
        """Greedy decoding with the KV cache, shaped like HF `generate`'s output (prompt + new tokens).

        Row by row: the graph takes no position ids, so a left-padded row would see shifted positions.
        Rows that stop early are padded with `pad_token_id`, as `generate` does. A `streamer` (HF's
        TextStreamer protocol, batch 1 as in HF) gets the prompt, then each token as it is decoded.
        """
        import numpy as np
        import torch

        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError("streaming needs a batch of one sequence (as HF generate does)")
        ids = input_ids.cpu().numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy()
        eos = _eos_ids(self.config)
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        out = np.full((ids.shape[0], ids.shape[1] + max_new_tokens), pad, dtype=ids.dtype)
        out[:, : ids.shape[1]] = ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        for b in range(ids.shape[0]):
            row = ids[b][mask[b].astype(bool)][None, :]
            past = self.empty_past(1)
            for t in range(max_new_tokens):
                logits, past = self.run(
                    row, np.ones((1, row.shape[1] + past[0].shape[2]), dtype=ids.dtype), past
                )
                token = int(logits[0, -1].argmax())
                out[b, ids.shape[1] + t] = token
                if streamer is not None:
                    streamer.put(torch.tensor([token]))
                if token in eos:
                    break
                row = np.array([[token]], dtype=ids.dtype)
        if streamer is not None:
            streamer.end()
        return torch.from_numpy(out)


def _config(folder: Path) -> Any:
    if (folder / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(folder))
    return SimpleNamespace(max_position_embeddings=None, eos_token_id=None)


def _eos_ids(config: Any) -> set[int]:
    value = getattr(config, "eos_token_id", None)
    return {value} if isinstance(value, int) else set(value or [])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
