"""Load the model to train: precision by hardware, full / LoRA / QLoRA, gradient checkpointing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.resources import plan as planner
from tuneloop.resources.shapes import ModelShape, shape_from_folder
from tuneloop.train import attention
from tuneloop.train.config import TrainConfig

log = logging.getLogger("tuneloop.train")


@dataclass
class Precision:
    name: str  # "bf16" | "fp16" | "fp32"
    autocast: torch.dtype | None  # for autocast

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


def load_for_training(
    cfg: TrainConfig, path: str, device: str, precision: Precision, checkpoint_layers: int | None = None
) -> torch.nn.Module:
    """The model ready for training on `device` (a PeftModel for lora/qlora).

    `checkpoint_layers`: how many decoder layers recompute their activations in backward (from
    `checkpointing_layers`; None: all when gradient_checkpointing is true, else none).
    """
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
    return prepare_for_training(model, cfg, device, precision, checkpoint_layers)


def prepare_for_training(
    model: torch.nn.Module,
    cfg: TrainConfig,
    device: str,
    precision: Precision,
    checkpoint_layers: int | None = None,
) -> torch.nn.Module:
    """A loaded model made trainable: kernels, checkpointing, adapters, compilation (in that order:
    Liger patches modules that compile then traces; PEFT wraps the linears that checkpointing reruns)."""
    if checkpoint_layers is None:
        checkpoint_layers = len(decoder_layers(model)) if cfg.gradient_checkpointing is True else 0
    if use_padding_free(cfg, device):
        attention.use_padding_free(model)
    if cfg.liger:
        apply_liger(model, device)
    set_checkpointing(model, checkpoint_layers)
    if cfg.method in ("lora", "qlora"):
        model = _add_lora(model, cfg)
        if precision.autocast is not None:
            # autocast runs the fp32 adapters in 16 bits anyway; PEFT's cast of each input to fp32
            # first only adds a saved fp32 copy per adapted linear (+4 B x in_features per token)
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
    if use_compile(cfg, device):
        compile_layers(model)
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (HF names them *DecoderLayer): the unit of checkpointing, compiling, sharding."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def set_checkpointing(model: torch.nn.Module, layers: int) -> None:
    """Checkpoint the first `layers` decoder layers only (selective checkpointing).

    Every checkpointed layer runs its forward twice, so checkpointing only as many layers as memory
    requires keeps most of the speed of no checkpointing at all.
    """
    if layers <= 0:
        return
    # non-reentrant: works with frozen inputs (no enable_input_require_grads) and with torch.compile;
    # newer transformers renamed the switch
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for i, layer in enumerate(decoder_layers(model)):
        if i >= layers:
            layer.gradient_checkpointing = False


def use_padding_free(cfg: TrainConfig, device: str) -> bool:
    """Flattened micro-batches (no pad tokens computed at all) for sft and pretrain.

    DPO and KTO score each sequence as a row, so they keep rows. `auto` turns it on where varlen attention
    is one fused kernel (CUDA); on a CPU each document is its own attention call.
    """
    if cfg.objective in ("dpo", "kto"):
        return False
    if cfg.data.padding_free == "auto":
        return device.startswith("cuda")
    return bool(cfg.data.padding_free)


def use_compile(cfg: TrainConfig, device: str) -> bool:
    if cfg.compile == "auto":
        # a CPU run is usually short and compiling costs tens of seconds there; the GPU gains most
        return device.startswith("cuda")
    return bool(cfg.compile)


def compile_layers(model: torch.nn.Module) -> int:
    """Regional compilation: torch.compile each decoder layer in place.

    All layers share one compiled graph (parameters are graph inputs), so compiling costs about
    one layer's time, not the model's; Inductor fuses the norms, rotary, SiLU-and-multiply and the
    LoRA adds, and its partitioner recomputes cheap elementwise results in backward instead of
    saving them.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def apply_liger(model: torch.nn.Module, device: str) -> None:
    """Liger's Triton kernels for RMSNorm, RoPE and SwiGLU, patched into this model instance."""
    if not device.startswith("cuda"):
        raise TuneloopError(
            "liger=true needs a CUDA GPU (Liger's kernels are Triton)", hint="set liger=false"
        )
    try:
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        raise missing_extra("liger-kernel", "gpu") from None
    # the loss stays ours (linear_ce): Liger's fused cross-entropy would replace the model's forward
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )


def _bnb_config(cfg: TrainConfig, precision: Precision) -> BitsAndBytesConfig:
    if not torch.cuda.is_available():
        raise TuneloopError(
            "method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels)", hint="use method=lora on a CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise missing_extra("bitsandbytes", "gpu") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.qlora.quant_type,
        bnb_4bit_use_double_quant=cfg.qlora.double_quant,
        bnb_4bit_compute_dtype=precision.autocast or torch.float32,
    )


def _add_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
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
    return get_peft_model(model, config)


def plan_request(
    cfg: TrainConfig, shape: ModelShape, precision: Precision, world: int, checkpoint_layers: int | None
) -> planner.PlanRequest:
    """What `tuneloop plan` would be asked for this config and model shape."""
    # data.max_length is a cap; no sequence can be longer than the model's context
    targets = cfg.lora.targets if isinstance(cfg.lora.targets, list) else None
    request = planner.PlanRequest(
        model=shape.name,
        method=cfg.method,
        seq_len=min(cfg.data.max_length, shape.max_position_embeddings),
        micro_batch=cfg.batch.micro_batch,
        gradient_checkpointing=bool(checkpoint_layers),
        checkpoint_layers=checkpoint_layers,
        fused=cfg.fused_loss and precision.autocast is not None,
        compiled=use_compile(cfg, "cuda"),
        gpus=world,
        lora_rank=cfg.lora.rank,
        precision=precision.name,
        master_weights=cfg.method == "full" and cfg.master_weights,
        global_batch=cfg.batch.global_batch,
        **({"lora_targets": targets} if targets else {}),
    )
    return request


def checkpointing_layers(
    cfg: TrainConfig, path: str, device: str, precision: Precision, world: int
) -> int | None:
    """How many decoder layers to checkpoint: the config's number, or under `auto` on a GPU the
    fewest that `plan` says fit the memory budget (0 when everything fits). None: all or none, as
    gradient_checkpointing says."""
    if cfg.checkpoint_layers is not None:
        return cfg.checkpoint_layers
    if cfg.gradient_checkpointing != "auto":
        return None
    if not device.startswith("cuda"):
        return 0  # a CPU has no hard memory wall worth trading a third of the speed for
    shape = shape_from_folder(Path(path))
    request = plan_request(cfg, shape, precision, world, 0)
    budget = (
        int(cfg.memory_budget_gib * 2**30) if cfg.memory_budget_gib else planner.detected_memory(world)[0]
    )
    if budget is None:
        return 0
    k = planner.fewest_checkpointed_layers(shape, request, budget)
    k = shape.num_layers if k is None else k  # nothing fits: all, and check_fit says why
    log.info(
        "gradient_checkpointing=auto: %d of %d layers checkpointed to fit %.1f GiB",
        k,
        shape.num_layers,
        budget / 2**30,
    )
    return k


def check_fit(
    cfg: TrainConfig,
    path: str,
    device: str,
    precision: Precision,
    world: int,
    checkpoint_layers: int | None = None,
) -> planner.Plan | None:
    """On a GPU, estimate memory with `tuneloop plan` before loading; refuse a model that cannot fit."""
    if not device.startswith("cuda") or not cfg.fit_check:
        return None
    if checkpoint_layers is None:
        checkpoint_layers = None if cfg.gradient_checkpointing is True else 0
    shape = shape_from_folder(Path(path))
    request = plan_request(cfg, shape, precision, world, checkpoint_layers)
    if cfg.gradient_checkpointing is True and checkpoint_layers is None:
        request = request.model_copy(update={"gradient_checkpointing": True})
    plan = planner.make_plan(shape, request)
    if plan.fits is False:
        gib = 2**30
        raise TuneloopError(
            f"this run needs about {plan.total / gib:.1f} GiB per GPU but {plan.available / gib:.1f} GiB is available "
            f"(method={cfg.method}, seq {cfg.data.max_length}, micro-batch {cfg.batch.micro_batch})",
            hint="; ".join(plan.advice)
            or "see `tuneloop plan` for what fits; fit_check=false skips this check",
        )
    return plan


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
