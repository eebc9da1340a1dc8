"""Weight-only int8/int4 quantization: torchao on CPU, bitsandbytes on CUDA, saved so it reloads.

- int8 (CPU): torchao `Int8WeightOnlyConfig` through transformers' `TorchAoConfig`; the folder is a
  normal HF folder (safetensors + `quantization_config`) that `from_pretrained` reloads as is.
- int4 (CPU): torchao's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`, bf16 activations) via
  `PrototypeInt4WeightOnlyConfig`. Its tensor type has no safetensors serializer in transformers,
  so the packed nibbles and the scales/zeros are written as plain tensors next to `int4.json`, and
  `tuneloop.models.int4.load_int4` rebuilds the model from them.
- CUDA: bitsandbytes LLM.int8 / NF4 (double quantization), reloaded by `from_pretrained`.

The lm_head is left in full precision (it is tied to the embeddings in small models, and it is
the layer whose error costs the most quality).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuneloop.errors import missing_extra
from tuneloop.models.formats import INT4_MANIFEST, INT4_WEIGHTS
from tuneloop.models.loading import load_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Method = Literal["int8", "int4"]
GROUP_SIZES = (128, 64, 32)  # what the CPU int4 kernel accepts; the largest that divides K wins


def quantize_folder(src: Path, out: Path, method: Method, device: str) -> dict[str, Any]:
    """Quantize the HF folder `src` into `out`; returns what was done (backend, config) for the report."""
    if device.startswith("cuda"):
        return _bitsandbytes(src, out, method)
    if method == "int8":
        return _torchao_int8(src, out)
    return _torchao_int4(src, out)


def _torchao_config(method: Method) -> Any:
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError:
        raise missing_extra("torchao", "export") from None
    if method == "int8":
        return Int8WeightOnlyConfig()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig  # a class: the group size is chosen per layer


def _torchao_int8(src: Path, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, TorchAoConfig

    config = TorchAoConfig(_torchao_config("int8"), modules_to_not_convert=["lm_head"])
    # bf16 activations: torchao's int8 weight-only matmul is ~7x slower with fp32 inputs on CPU
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16, quantization_config=config)
    model.save_pretrained(str(out))
    return {"backend": "torchao", "config": "Int8WeightOnlyConfig", "dtype": "bfloat16"}


def _linear_targets(model: PreTrainedModel) -> dict[str, int]:
    """Linear layers to quantize (name -> group size); lm_head and odd shapes stay as they are."""
    import torch

    targets = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            size = next((g for g in GROUP_SIZES if module.in_features % g == 0), None)
            if size is not None:
                targets[name] = size
    return targets


def _torchao_int4(src: Path, out: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from torchao.quantization import quantize_

    config_cls = _torchao_config("int4")
    model = load_model(src, "cpu", dtype=torch.bfloat16)
    targets = _linear_targets(model)
    for name, group in targets.items():
        quantize_(model.get_submodule(name), config_cls(group_size=group), filter_fn=lambda m, _: True)
    tensors = {}
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in targets and key.endswith(".weight"):
            tensors[f"{key}.qdata"], tensors[f"{key}.scale_and_zero"] = value.qdata, value.scale_and_zero
        elif not (key == "lm_head.weight" and model.config.tie_word_embeddings):
            tensors[key] = value.contiguous()  # a tied lm_head is the embedding: stored once
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / INT4_WEIGHTS))
    model.config.save_pretrained(out)
    shapes = {n: list(model.get_submodule(n).weight.shape) for n in targets}
    manifest = {"format": "torchao-int4-cpu", "groups": targets, "shapes": shapes, "dtype": "bfloat16"}
    (out / INT4_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return {
        "backend": "torchao",
        "config": "PrototypeInt4WeightOnlyConfig",
        "group_sizes": sorted(set(targets.values())),
    }


def _bitsandbytes(src: Path, out: Path, method: Method) -> dict[str, Any]:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise missing_extra("bitsandbytes", "export") from None
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=["lm_head"],
        )
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=config, device_map="cuda")
    model.save_pretrained(str(out))
    kind = "LLM.int8" if method == "int8" else "NF4 + double quantization"
    return {"backend": "bitsandbytes", "config": kind, "quantize_s": time.perf_counter() - t}
