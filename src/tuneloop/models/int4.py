"""Load a packed int4 export (what `tuneloop export --quantize int4` writes on a CPU).

torchao's int4 tensor type has no safetensors serializer in transformers, so the export stores the
packed nibbles and the scales/zeros as plain tensors next to `int4.json`; this rebuilds the model
from them on torchao's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`, bf16 activations).
torchao is the `export` extra: imported when a folder is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import TuneloopError
from tuneloop.models.formats import INT4_MANIFEST, INT4_WEIGHTS

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_int4(path: Path) -> PreTrainedModel:
    """Rebuild a model written by `tuneloop.export.quantize`: bf16 skeleton, packed int4 linears."""
    import torch
    from safetensors.torch import load_file
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = json.loads((Path(path) / INT4_MANIFEST).read_text())
    tensors = load_file(str(Path(path) / INT4_WEIGHTS))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16)
    for name, group in manifest["groups"].items():
        key = f"{name}.weight"
        weight = Int4OpaqueTensor(
            tensors.pop(f"{key}.qdata"),
            tensors.pop(f"{key}.scale_and_zero"),
            [1, group],
            torch.Size(manifest["shapes"][name]),
        )
        model.get_submodule(name).weight = torch.nn.Parameter(weight, requires_grad=False)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    _check_keys(path, missing, unexpected, model, manifest["groups"])
    _rebuild_buffers(model)
    return model.eval()


def _check_keys(
    path: Path, missing: list[str], unexpected: list[str], model: PreTrainedModel, groups: dict[str, int]
) -> None:
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    left = set(missing) - tied - {f"{name}.weight" for name in groups}
    if left or unexpected:
        raise TuneloopError(
            f"int4 export '{path}' does not match its config (missing {sorted(left)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})",
            hint="re-run `tuneloop export --quantize int4`",
        )
    if tied:
        model.tie_weights()


def _rebuild_buffers(model: PreTrainedModel) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in the file: rebuild their modules off meta."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)) and hasattr(module, "config"):
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent) if parent else model, child, type(module)(config=module.config)
            )
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise TuneloopError(
            f"cannot rebuild buffers {left[:3]} of this architecture for int4", hint="use --quantize int8"
        )
