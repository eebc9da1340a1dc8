"""Load the model to train: precision by hardware, full / LoRA / QLoRA, gradient checkpointing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (measured 4x faster than fp32 for LoRA steps).

    Without them PyTorch emulates bf16 on the CPU, which is slower than fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_precision(requested: str, device: str) -> Precision:
    """bf16 where the hardware does it natively, fp16 on older GPUs, else fp32."""
    import torch

    cuda = device.startswith("cuda")
    if requested == "auto":
        if cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and not cuda:
        raise TuneloopError("precision=fp16 needs a CUDA GPU", hint="use precision=auto or fp32 on a CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]
    return Precision(requested, dtype)


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
    master = cfg.method == "full" and cfg.master_weights
    base_dtype = torch.float32 if master or precision.autocast is None else precision.autocast
    model = AutoModelForCausalLM.from_pretrained(path, dtype=base_dtype, **kwargs)
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    # QLoRA skips peft's prepare_model_for_kbit_training on purpose: it upcasts embeddings, norms
    # and lm_head to fp32 (+2 GB on Llama-3-8B) where autocast already computes them safely.
    if cfg.gradient_checkpointing:
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


def check_fit(cfg: TrainConfig, path: str, device: str, precision: Precision, world: int) -> Any:
    """On a GPU, estimate memory with `tuneloop plan` before loading; refuse a model that cannot fit."""
    if not device.startswith("cuda") or not cfg.fit_check:
        return None
    from tuneloop.resources.plan import PlanRequest, make_plan
    from tuneloop.resources.shapes import shape_from_folder

    shape = shape_from_folder(Path(path))
    # data.max_length is a cap; no sequence can be longer than the model's context
    targets = cfg.lora.targets if isinstance(cfg.lora.targets, list) else None
    request = PlanRequest(
        model=path, method=cfg.method, seq_len=min(cfg.data.max_length, shape.max_position_embeddings), micro_batch=cfg.batch.micro_batch,
        gradient_checkpointing=cfg.gradient_checkpointing, gpus=world, lora_rank=cfg.lora.rank,
        precision=precision.name, master_weights=cfg.method == "full" and cfg.master_weights,
        global_batch=cfg.batch.global_batch, **({"lora_targets": targets} if targets else {}),
    )  # fmt: skip
    plan = make_plan(shape, request)
    if plan.fits is False:
        gib = 2**30
        raise TuneloopError(
            f"this run needs about {plan.total / gib:.1f} GiB per GPU but {plan.available / gib:.1f} GiB is available "
            f"(method={cfg.method}, seq {cfg.data.max_length}, micro-batch {cfg.batch.micro_batch})",
            hint="; ".join(plan.advice)
            or "see `tuneloop plan` for what fits; fit_check=false skips this check",
        )
    return plan


def trainable_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
