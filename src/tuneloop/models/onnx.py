"""Run an ONNX export (what `tuneloop export --onnx` writes) on ONNX Runtime, called like an HF model.

The graph takes `input_ids`, `attention_mask` and `past_key_values.{i}.key|value` and returns
`logits` and `present.{i}.key|value` (the layout onnxruntime-genai and optimum use; see
`tuneloop.export.onnx`), so prefill is the same graph with an empty (length-0) past and decoding
feeds the presents back in. onnxruntime is the `export` extra: imported when a folder is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.models.formats import ONNX_FILE, ONNX_META

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PretrainedConfig
    from transformers.generation.streamers import BaseStreamer


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

    def empty_past(self, batch: int) -> list[np.ndarray]:
        import numpy as np

        shape = (batch, self.meta["kv_heads"], 0, self.meta["head_dim"])
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.meta["layers"])]

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward pass on numpy arrays: (logits (B, T, V), presents)."""
        names = self.meta["inputs"]
        feeds = {names[0]: input_ids, names[1]: attention_mask, **dict(zip(names[2:], past, strict=True))}
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> SimpleNamespace:
        """HF-style call on torch tensors without a cache: `.logits` as a torch tensor."""
        import torch

        ids = input_ids.cpu().numpy()
        mask = ids * 0 + 1 if attention_mask is None else attention_mask.cpu().numpy()
        logits, _ = self.run(ids, mask, self.empty_past(ids.shape[0]))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        pad_token_id: int | None = None,
        streamer: BaseStreamer | None = None,
        **_: object,
    ) -> torch.Tensor:
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


def _config(folder: Path) -> PretrainedConfig | SimpleNamespace:
    if (folder / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(folder))
    return SimpleNamespace(max_position_embeddings=None, eos_token_id=None)


def _eos_ids(config: PretrainedConfig | SimpleNamespace) -> set[int]:
    value = getattr(config, "eos_token_id", None)
    return {value} if isinstance(value, int) else set(value or [])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
