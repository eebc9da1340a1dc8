"""Training memory planner: will this model and method fit, and how should it be trained?

Pure functions over a `ModelShape` and a `PlanRequest`. The numbers model what transformers (HF
Llama with SDPA) + PEFT + torch AdamW actually allocate, per GPU, at the peak of a training step:

- weights: params x dtype; QLoRA: NF4 linears (0.5 B/param + double-quant constants), the
  embeddings, lm_head and norms stay 16-bit.
- LoRA adapters: PEFT keeps them in fp32 (autocast_adapter_dtype) with fp32 grads and AdamW states.
- activations: saved-tensor bytes per token per layer, counted with `saved_tensors_hooks` on HF
  Llama (see benchmarks/plan_memory.py): RMSNorm saves an fp32 copy, PEFT saves an fp32 copy of each
  adapted linear's input, a frozen base linear saves nothing, SDPA saves q, k, v, out and logsumexp.
- logits/loss: bf16 logits + fp32 log-softmax + fp32 grads at the start of backward (14 B x vocab per
  token in 16-bit) - for a 128k vocabulary this is often the largest single item.
- full fine-tuning peaks either at the start of backward (activations) or in the optimizer step
  (all grads + a foreach temporary), whichever is larger; on several GPUs, FSDP full-shard / ZeRO-3
  divides weights, grads and optimizer states.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import field_validator

from tuneloop.config import Config
from tuneloop.errors import TuneloopError
from tuneloop.resources.doctor import detect_gpus
from tuneloop.resources.head_chunk import chunk_tokens
from tuneloop.resources.shapes import LINEAR_TARGETS, ModelShape

GiB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
CUDA_CONTEXT = 767 * 1024**2  # CUDA context + cuBLAS workspace, outside torch's allocator (H100, torch 2.11)
FRAGMENTATION = 0.05  # caching-allocator slack (reserved - allocated), of the kept activations
# tuneloop's trainer (fused=True) compiles each layer: Inductor's partitioner recomputes cheap
# elementwise results (norms, SiLU) in backward instead of saving them. Fitted to the H100 run of
# 2026-11-28 (benchmarks/train_gpu.py): bytes per token per uncheckpointed layer, x hidden size.
COMPILED_LORA_SAVED = 7.5
# full fine-tuning over fp32 master weights under bf16 autocast keeps an fp32 residual stream: the
# norms save fp32 inputs and outputs (same run, x hidden size)
MASTER_FUSED_EXTRA = 12
FUSED_HEAD_BYTES = 8  # per vocab entry and chunk token: 16-bit logits, fp32 copy (grad in place), 16-bit grad
LOGITS_SLACK = 4  # B x vocab per token of freed forward logits blocks backward cannot reuse (measured)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + 8-bit absmax per 64 + fp32 per 256 blocks


class PlanRequest(Config):
    """What to plan; every field is a CLI option of `tuneloop plan`."""

    model: str = "smollm2-135m"
    method: Literal["full", "lora", "qlora"] = "lora"
    seq_len: int = 2048
    micro_batch: int = 1
    gradient_checkpointing: bool = True
    checkpoint_layers: int | None = None  # selective: only the first N layers (None: all or none)
    fused: bool = False  # tuneloop's trainer: fused LM-head loss, adapters read 16-bit inputs
    compiled: bool = False  # tuneloop's trainer with compile on (the CUDA default): layers compiled
    gpus: int = 1
    gpu_memory: int | None = None  # bytes per GPU; None = what doctor sees
    lora_rank: int = 16
    lora_targets: list[str] = field(default_factory=lambda: list(LINEAR_TARGETS))
    global_batch: int | None = None
    optimizer: Literal["adamw", "adamw8bit", "sgd"] = "adamw"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    master_weights: bool = False  # fp32 master copy + fp32 states (DeepSpeed/FSDP mixed precision)

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _targets(cls, v: object) -> object:
        if isinstance(v, str):
            v = [t for t in re.split(r"[,\s]+", v) if t]
        return [t.removesuffix("_proj") for t in v] if isinstance(v, list) else v


@dataclass
class Component:
    name: str
    bytes: int
    note: str = ""
    at_peak: bool = True


@dataclass
class Plan:
    """The estimate for one request; `total` is the per-GPU peak including overhead."""

    request: PlanRequest
    shape: ModelShape
    strategy: str
    components: list[Component]
    total_params: int
    trainable_params: int
    peak_allocated: int
    total: int
    available: int | None
    gpu_name: str | None
    fits: bool | None
    max_micro_batch: int | None = None
    grad_accum: int | None = None
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["request"] = self.request.model_dump()
        return d


# ---------------------------------------------------------------- validation


def parse_memory(text: str | int | None) -> int | None:
    """'80GiB', '80GB', '24G', '81920MiB', '1.5T' or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)", text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise TuneloopError(
            f"--gpu-memory '{text}' is not a memory size", hint="write e.g. 80GiB, 24GB or 40G"
        )
    # accelerate's convention: "GB" is 10^9, "GiB" and a bare "G" are 2^30
    decimal = bool(m.group(2) and m.group(4) and not m.group(3))
    return int(float(m.group(1)) * (1000 if decimal else 1024) ** " kmgt".index(m.group(2) or " "))


def validate(req: PlanRequest, shape: ModelShape) -> None:
    """Refuse impossible numbers with a message that names the option."""
    checks = [
        (req.seq_len <= 0, "--seq-len must be positive", "e.g. --seq-len 2048"),
        (req.micro_batch <= 0, "--micro-batch must be positive", "e.g. --micro-batch 1"),
        (req.gpus <= 0, "--gpus must be at least 1", "e.g. --gpus 1"),
        (req.lora_rank <= 0, "--lora-rank must be positive", "e.g. --lora-rank 16"),
        (req.gpu_memory is not None and req.gpu_memory <= 0, "--gpu-memory must be positive", "e.g. 80GiB"),
        (req.global_batch is not None and req.global_batch <= 0, "--global-batch must be positive", ""),
        (
            req.seq_len > shape.max_position_embeddings,
            f"--seq-len {req.seq_len} is beyond {shape.name}'s max_position_embeddings "
            f"({shape.max_position_embeddings})",
            f"use --seq-len {shape.max_position_embeddings} or less",
        ),
    ]
    for bad, message, hint in checks:
        if bad:
            raise TuneloopError(message, hint=hint or None)
    unknown = [t for t in req.lora_targets if t not in LINEAR_TARGETS]
    if unknown or not req.lora_targets:
        raise TuneloopError(
            f"--lora-targets has unknown modules: {', '.join(unknown) or '(none given)'}",
            hint=f"choose from {','.join(LINEAR_TARGETS)}",
        )
    if req.global_batch is not None and req.global_batch % (req.micro_batch * req.gpus):
        raise TuneloopError(
            f"--global-batch {req.global_batch} is not divisible by --micro-batch x --gpus "
            f"({req.micro_batch} x {req.gpus} = {req.micro_batch * req.gpus})",
            hint="pick a global batch that is a multiple of micro-batch x GPUs",
        )


# ---------------------------------------------------------------- parameters and states


def lora_param_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """A (r x in) + B (out x r) per adapted linear, per layer (matches PEFT's count)."""
    linears = shape.linear_shapes()
    return shape.num_layers * sum(rank * (linears[t][0] + linears[t][1]) for t in targets)


def weight_bytes(shape: ModelShape, req: PlanRequest) -> int:
    """The base model's weights on one GPU (before sharding)."""
    b = DTYPE_BYTES[req.precision]
    if req.method != "qlora":
        return shape.num_params * b
    linear = shape.num_layers * sum(a * c for a, c in shape.linear_shapes().values())
    # bnb keeps biases, embeddings, lm_head and norms in the 16-bit compute dtype
    return int(linear * NF4_BYTES) + (shape.num_params - linear) * b


def optimizer_bytes_per_param(req: PlanRequest, state_bytes: int) -> float:
    """Optimizer state per trainable parameter; `state_bytes` is the parameter dtype's size."""
    if req.optimizer == "adamw8bit":
        return 2 + 2 * 4 / 256  # uint8 m and v + fp32 absmax per 256-element block
    states = 2 if req.optimizer == "adamw" else 1  # SGD: one momentum buffer
    return states * state_bytes


def full_state_bytes(shape: ModelShape, req: PlanRequest) -> tuple[int, int, int, int]:
    """(weights, grads, optimizer, optimizer-step temporary) for full fine-tuning, one GPU's share."""
    n, b = shape.num_params, DTYPE_BYTES[req.precision]
    if req.master_weights and b < 4:
        # mixed precision a la DeepSpeed/FSDP: 16-bit weights+grads, fp32 master + fp32 states, fused step
        weights, grads = n * b, n * b
        optim = n * (4 + optimizer_bytes_per_param(req, 4))
        temp = 0
    else:
        # pure 16-bit (torch dtype=bf16): states in the param dtype; foreach AdamW allocates sqrt(v)
        weights, grads = n * b, n * b
        optim = int(n * optimizer_bytes_per_param(req, b))
        temp = n * b if req.optimizer == "adamw" else 0
    shards = req.gpus  # FSDP full-shard / ZeRO-3 divides every state by the GPU count
    if shards > 1:
        gathered = 2 * (shape.linear_params_per_layer + 2 * shape.hidden_size) * b  # 1 layer + prefetch
        embed = shape.vocab_size * shape.hidden_size * b  # the unsharded embedding/lm_head while in use
        return weights // shards + gathered + embed, grads // shards, int(optim // shards), temp // shards
    return weights, grads, int(optim), temp


# ---------------------------------------------------------------- activations (bytes per token)


def layer_activation_bytes(shape: ModelShape, req: PlanRequest) -> float:
    """Saved-for-backward bytes per token in one decoder layer (HF Llama, SDPA, PEFT)."""
    b = DTYPE_BYTES[req.precision]
    h, i = shape.hidden_size, shape.intermediate_size
    full = req.method == "full"
    # RMSNorm: fp32 copy of x (shared by pow and mul) + rsqrt; the normed x only if the weight trains
    norm = 4 * h + 4 + (b * h if full else 0)
    # SDPA (flash / efficient / CPU flash) saves q, k, v, out and an fp32 logsumexp per head
    attn = b * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.num_heads
    mlp = 3 * b * i  # SiLU input (gate out), SiLU output, up output for the gated product
    # full: linear inputs kept for weight grads (o_proj's is SDPA's out); LoRA: fp32 adapter inputs
    inputs = b * h + b * h + b * i if full else _adapter_input_bytes(shape, req)
    total = 2 * norm + attn + mlp + inputs
    if req.fused and req.compiled and not full:
        total -= COMPILED_LORA_SAVED * h
    if req.fused and full and req.master_weights:
        total += MASTER_FUSED_EXTRA * h
    return total


def _adapter_input_bytes(shape: ModelShape, req: PlanRequest) -> float:
    """PEFT casts each adapted linear's input to the fp32 adapter dtype and lora_A saves that copy."""
    b = DTYPE_BYTES[req.precision]
    linears = shape.linear_shapes()
    r = req.lora_rank
    # lora_A's output, saved by lora_B: fp32, or 16-bit where autocast runs the adapters (fused)
    total = (b if req.fused else 4) * r * len(req.lora_targets)
    if b != 4 and not req.fused:
        return total + sum(4 * linears[t][0] for t in req.lora_targets)
    # no cast (fp32 base, or tuneloop's trainer): the adapters save the very input tensors, shared
    # within a group
    targets = set(req.lora_targets)
    total += b * shape.hidden_size * (bool(targets & {"q", "k", "v"}) + bool(targets & {"gate", "up"}))
    return total + (b * shape.intermediate_size if "down" in targets else 0)


def logits_peak_bytes(shape: ModelShape, req: PlanRequest) -> int:
    """Per token: the fp32 log-softmax (saved) with its grad in and out, at the start of backward.

    Forward holds 16-bit logits + their fp32 upcast + log-softmax (10 B x V); by backward the model
    output (and its 16-bit logits) is dropped, leaving three fp32 (B, T, V) tensors (12 B x V).
    The fused loss (train/linear_ce.py) holds only the hidden states' gradient per token, plus
    one chunk of logits (`FUSED_HEAD_BYTES`) that do not grow with the batch.
    """
    b = DTYPE_BYTES[req.precision]
    if req.fused:
        return 2 * b * shape.hidden_size
    forward = shape.vocab_size * (b + 4 + 4) if b != 4 else shape.vocab_size * 8
    return max(forward, 12 * shape.vocab_size) + 4 * shape.hidden_size


def backward_transient_bytes(shape: ModelShape, req: PlanRequest) -> float:
    """Per token, the largest set of gradient buffers alive while one layer runs backward."""
    b = DTYPE_BYTES[req.precision]
    i = shape.intermediate_size
    # down_proj backward: grad of its input (16-bit) + grads of silu-out and up for the product;
    # with an fp32 adapter on down_proj, its fp32 input grad too
    adapter = 4 * i if req.method != "full" and "down" in req.lora_targets else 0
    return 3 * b * i + adapter + 2 * b * shape.hidden_size


def activation_bytes(shape: ModelShape, req: PlanRequest, micro_batch: int) -> tuple[int, int, int]:
    """(kept through backward, logits/loss peak, one layer's backward) in bytes for one micro-batch.

    The step peaks either at the start of backward (kept + logits) or while a layer runs backward
    (kept + that layer's recomputed activations under checkpointing + gradient buffers).
    """
    tokens = micro_batch * req.seq_len
    per_layer = layer_activation_bytes(shape, req)
    b = DTYPE_BYTES[req.precision]
    final_norm = 4 * shape.hidden_size + 4
    k = checkpointed_layers(shape, req)
    # a checkpointed layer keeps only its (B, T, H) input; the others keep everything
    kept = k * b * shape.hidden_size + (shape.num_layers - k) * per_layer + final_norm
    layer = (per_layer if k else 0) + backward_transient_bytes(shape, req)
    layer_bytes = tokens * layer
    if req.method == "qlora":
        layer_bytes += 2 * shape.largest_linear  # one weight dequantized to 16-bit at a time
    logits = tokens * logits_peak_bytes(shape, req)
    if req.fused:  # one chunk of the head's logits at a time (train/linear_ce.py)
        logits += FUSED_HEAD_BYTES * shape.vocab_size * min(tokens, chunk_tokens(shape.vocab_size))
    if req.fused and req.method == "full":  # linear_ce's fp32 gradient of the (trainable) head
        logits += 4 * shape.vocab_size * shape.hidden_size
    return int(tokens * kept), logits, int(layer_bytes)


def checkpointed_layers(shape: ModelShape, req: PlanRequest) -> int:
    if req.checkpoint_layers is not None:
        return min(req.checkpoint_layers, shape.num_layers)
    return shape.num_layers if req.gradient_checkpointing else 0


def fewest_checkpointed_layers(shape: ModelShape, req: PlanRequest, budget: int) -> int | None:
    """The fewest checkpointed layers (selective checkpointing) whose total fits `budget` bytes.

    Each checkpointed layer costs one more forward of that layer in backward, so fewer is faster;
    None when even checkpointing every layer does not fit.
    """
    for k in range(shape.num_layers + 1):  # total falls as k grows: the first fit is the fewest
        if total_bytes(shape, req.model_copy(update={"checkpoint_layers": k})) <= budget:
            return k
    return None


# ---------------------------------------------------------------- the estimate


def components(shape: ModelShape, req: PlanRequest, micro_batch: int) -> list[Component]:
    """Every memory item on one GPU; `at_peak` marks those alive at the step's peak."""
    kept, logits, layer = activation_bytes(shape, req, micro_batch)
    acts_phase = kept + max(logits, layer)
    rows: list[Component] = []
    if req.method == "full":
        w, g, opt, temp = full_state_bytes(shape, req)
        step_wins = g + temp > acts_phase
        sharded = " (FSDP full-shard)" if req.gpus > 1 else ""
        rows += [
            Component("weights", w, f"{shape.num_params / 1e9:.2f}B x {req.precision}{sharded}"),
            Component("gradients", g, "all grads exist at the optimizer step", at_peak=step_wins),
            Component("optimizer states", opt, _optim_note(req)),
            Component("optimizer step temp", temp, "foreach AdamW sqrt(v) buffer", at_peak=step_wins),
        ]
    else:
        n = lora_param_count(shape, req.lora_rank, req.lora_targets)
        ddp = 2 if req.gpus > 1 else 1  # DDP keeps a bucket copy of the (small) adapter grads
        rows += [
            Component("weights", weight_bytes(shape, req), _weights_note(shape, req)),
            Component("LoRA params", 4 * n, f"{n / 1e6:.1f}M fp32 (r={req.lora_rank})"),
            Component("gradients", 4 * n * ddp, "adapter grads, fp32"),
            Component(
                "optimizer states", int(n * optimizer_bytes_per_param(req, 4)) + 4 * n, _optim_note(req)
            ),
        ]
        step_wins = False
    logit_wins = logits >= layer
    rows += [
        Component("activations", kept, _acts_note(req, micro_batch), at_peak=not step_wins),
        Component(
            "logits + loss",
            logits,
            f"vocab {shape.vocab_size}, at backward start",
            at_peak=not step_wins and logit_wins,
        ),
        Component(
            "layer backward",
            layer,
            "recomputed layer + grad buffers"
            if checkpointed_layers(shape, req)
            else "grad buffers of one layer",
            at_peak=not step_wins and not logit_wins,
        ),
    ]
    tokens = micro_batch * req.seq_len
    slack = int(FRAGMENTATION * kept) + (0 if req.fused else LOGITS_SLACK * shape.vocab_size * tokens)
    rows.append(
        Component(
            "CUDA context + allocator",
            CUDA_CONTEXT + slack,
            "context, cuBLAS workspace, caching-allocator slack",
        )
    )
    return rows


def _weights_note(shape: ModelShape, req: PlanRequest) -> str:
    if req.method == "qlora":
        return f"{shape.num_params / 1e9:.2f}B: NF4 linears + 16-bit embeddings/norms"
    return f"{shape.num_params / 1e9:.2f}B x {req.precision}, frozen"


def _optim_note(req: PlanRequest) -> str:
    if req.method != "full":
        return f"{req.optimizer} on fp32 adapters (+ step temp)"
    if req.master_weights:
        return f"{req.optimizer}: fp32 master + fp32 states"
    return f"{req.optimizer}: states in {req.precision}"


def _acts_note(req: PlanRequest, micro_batch: int) -> str:
    if req.checkpoint_layers is not None:
        ckpt = f"{req.checkpoint_layers} layers checkpointed"
    else:
        ckpt = "checkpointed layer inputs" if req.gradient_checkpointing else "all layers saved"
    return f"{micro_batch} x {req.seq_len} tokens, {ckpt}"


def peak_bytes(rows: list[Component]) -> tuple[int, int]:
    """(peak allocated by tensors, total per GPU including context and allocator slack)."""
    total = sum(c.bytes for c in rows if c.at_peak)
    overhead = next(c.bytes for c in rows if c.name.startswith("CUDA context"))
    return total - overhead, total


def total_bytes(shape: ModelShape, req: PlanRequest, micro_batch: int | None = None) -> int:
    return peak_bytes(components(shape, req, micro_batch or req.micro_batch))[1]


def largest_micro_batch(shape: ModelShape, req: PlanRequest, available: int, limit: int = 4096) -> int:
    """The largest micro-batch whose total fits `available` (0 when even 1 does not)."""
    lo, hi = 0, limit
    while lo < hi:  # total grows with the micro-batch, so bisect
        mid = (lo + hi + 1) // 2
        if total_bytes(shape, req, mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def detected_memory(gpus: int) -> tuple[int | None, str | None]:
    """The smallest total memory among the first `gpus` GPUs doctor sees (None without a GPU)."""
    found = list(detect_gpus() or [])[:gpus]
    if not found:
        return None, None
    smallest = min(found, key=lambda g: g.memory_total)
    return int(smallest.memory_total), str(smallest.name)


def make_plan(shape: ModelShape, req: PlanRequest) -> Plan:
    """Validate, estimate, and (when the GPU memory is known) check the fit and advise."""
    validate(req, shape)
    available, gpu_name = (req.gpu_memory, None) if req.gpu_memory else detected_memory(req.gpus)
    rows = components(shape, req, req.micro_batch)
    allocated, total = peak_bytes(rows)
    trainable = (
        shape.num_params if req.method == "full" else lora_param_count(shape, req.lora_rank, req.lora_targets)
    )
    plan = Plan(
        request=req,
        shape=shape,
        strategy=_strategy(req),
        components=rows,
        total_params=shape.num_params,
        trainable_params=trainable,
        peak_allocated=allocated,
        total=total,
        available=available,
        gpu_name=gpu_name,
        fits=None if available is None else total <= available,
    )
    if req.global_batch:
        plan.grad_accum = req.global_batch // (req.micro_batch * req.gpus)
    if available is not None:
        plan.max_micro_batch = largest_micro_batch(shape, req, available)
    plan.advice = advise(shape, req, plan)
    return plan


def _strategy(req: PlanRequest) -> str:
    if req.gpus == 1:
        return "single GPU"
    if req.method == "full":
        return f"FSDP full-shard / ZeRO-3 over {req.gpus} GPUs (weights, grads, optimizer sharded)"
    return f"DDP over {req.gpus} GPUs (frozen base replicated, adapters all-reduced)"


def advise(shape: ModelShape, req: PlanRequest, plan: Plan) -> list[str]:
    """Concrete next steps, each checked against the estimate."""
    avail = plan.available
    if avail is None:
        return ["no GPU detected: pass --gpu-memory (e.g. 80GiB) to check the fit"]
    out: list[str] = []
    fits = lambda **kw: total_bytes(shape, req.model_copy(update=kw)) <= avail  # noqa: E731
    if plan.fits:
        if plan.max_micro_batch and plan.max_micro_batch > req.micro_batch:
            out.append(f"micro-batch up to {plan.max_micro_batch} fits; larger micro-batches train faster")
        if req.gradient_checkpointing and fits(gradient_checkpointing=False):
            out.append(
                "fits without gradient checkpointing too (about 30% faster): --no-gradient-checkpointing"
            )
        return out + _accum_advice(req, plan)
    if not req.gradient_checkpointing and fits(gradient_checkpointing=True):
        out.append("turn on gradient checkpointing: --gradient-checkpointing")
    if req.micro_batch > 1 and plan.max_micro_batch:
        out.append(f"use --micro-batch {plan.max_micro_batch} with more gradient accumulation")
    if req.method == "lora" and fits(method="qlora"):
        out.append("switch to QLoRA (4-bit base weights): --method qlora")
    if req.method == "full" and fits(method="lora"):
        out.append("switch to LoRA: --method lora")
    for n in (2, 4, 8, 16, 32, 64):
        if n > req.gpus and (req.method == "full" or n == req.gpus * 2) and fits(gpus=n):
            out.append(f"use {n} GPUs ({_strategy(req.model_copy(update={'gpus': n})).split(' over')[0]})")
            break
    seq = req.seq_len // 2
    while seq >= 128 and not fits(seq_len=seq, micro_batch=1):
        seq //= 2
    if seq >= 128 and seq < req.seq_len:
        out.append(f"shorter sequences: --seq-len {seq} fits at micro-batch 1")
    return out or ["does not fit even at micro-batch 1: use a smaller model or more GPU memory"]


def _accum_advice(req: PlanRequest, plan: Plan) -> list[str]:
    if not req.global_batch:
        return []
    out = [
        f"global batch {req.global_batch} = {req.micro_batch} x {req.gpus} GPUs x {plan.grad_accum} accumulation"
    ]
    best = plan.max_micro_batch or 0
    while best > req.micro_batch and req.global_batch % (best * req.gpus):
        best -= 1  # the largest micro-batch that still divides the global batch
    if best > req.micro_batch:
        accum = req.global_batch // (best * req.gpus)
        out.append(f"or --micro-batch {best} with {accum} accumulation steps (fewer, faster steps)")
    return out
