"""Load the model to train: precision by hardware, full / LoRA / QLoRA, gradient checkpointing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.train.config import TrainConfig


@dataclass
class Precision:
    name: str  # "bf16" | "fp16" | "fp32"
    autocast: Any  # torch dtype for autocast, or None

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"


def pick_precision(requested: str, device: str) -> Precision:
    """bf16 where the GPU supports it, else fp16 on a GPU, fp32 on a CPU (bf16 CPU matmuls are slow)."""
    import torch

    cuda = device.startswith("cuda")
    if requested == "auto":
        requested = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if requested == "fp16" and not cuda:
        raise TuneloopError("precision=fp16 needs a CUDA GPU", hint="use precision=auto or fp32 on a CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]
    return Precision(requested, dtype)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TuneloopError(f"device={device} but no CUDA GPU is visible", hint="use device=auto or cpu")
    return device


def load_for_training(cfg: TrainConfig, path: str, device: str, precision: Precision) -> Any:
    """The model ready for training on `device` (a PeftModel for lora/qlora)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = _bnb_config(cfg, precision)
        kwargs["device_map"] = {"": device}
    # full fine-tuning keeps fp32 master weights (autocast computes in bf16); adapters train over a
    # base already in the compute dtype, which halves its memory
    base_dtype = torch.float32 if cfg.method == "full" or precision.autocast is None else precision.autocast
    model = AutoModelForCausalLM.from_pretrained(path, dtype=base_dtype, **kwargs)
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in ("lora", "qlora"):
        model = _add_lora(model, cfg)
    return model


def _bnb_config(cfg: TrainConfig, precision: Precision) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise TuneloopError(
            "method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels)", hint="use method=lora on a CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise missing_extra("bitsandbytes", "gpu") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.qlora.quant_type,
        bnb_4bit_use_double_quant=cfg.qlora.double_quant,
        bnb_4bit_compute_dtype=precision.autocast or torch.float32,
    )


def _add_lora(model: Any, cfg: TrainConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise missing_extra("peft", "train") from None
    lora = cfg.lora
    targets = lora.targets
    if isinstance(targets, list):
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise TuneloopError(
                f"lora.targets {unknown} match no module of this model",
                hint=f"modules here include: {', '.join(sorted(n for n in names if n.endswith('proj'))[:12])}",
            )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.dora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def trainable_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
