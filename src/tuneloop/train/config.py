"""The training config: one YAML file (or none) plus `key=value` overrides, validated at construction.

tuneloop train train.yaml lora.rank=32 optim.lr=1e-4 batch.global_batch=64
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config import Config


class LoraSettings(Config):
    rank: int = Field(16, gt=0, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / rank)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] | Literal["all-linear"] = Field("all-linear", description="module names or all-linear")
    dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")


class QLoraSettings(Config):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class MixSource(Config):
    """One dataset of `data.mix` and its share of the training tokens."""

    path: str = Field(..., description="a dataset folder, URL or .jsonl file, as data.path")
    weight: float = Field(..., gt=0, description="share of training tokens (weights are normalized to sum 1)")


class DataSettings(Config):
    path: str | None = Field(
        None,
        description="a dataset from `tuneloop data prepare`: a folder or a URL (s3://bucket/prefix, any "
        "fsspec URL) holding train/part-*.jsonl shards and a manifest.json, a folder with train.jsonl, "
        "or a .jsonl file; needed unless data.mix is set",
    )
    mix: list[MixSource] = Field(
        default_factory=list,
        description="several datasets sampled by weight, e.g. [{path: a, weight: 0.7}, {path: b, weight: 0.3}]: "
        "each one's share of training tokens follows its weight (normalized to sum 1); streamed",
    )
    val_path: str | None = Field(
        None,
        description="validation .jsonl (default: the val split of data.path, or of each data.mix dataset)",
    )
    streaming: bool | Literal["auto"] = Field(
        "auto",
        description="read the training rows shard by shard while training instead of all up front; "
        "auto: for a URL, or a sharded dataset over 200k rows or 1 GB (manifest counts), and for data.mix",
    )
    shuffle_buffer: int = Field(
        10_000,
        gt=0,
        description="streaming: rows per shuffled window (each process's rows are shuffled within windows "
        "of this many, and the shard order per epoch)",
    )
    max_length: int = Field(1024, gt=8, description="tokens per sequence")
    overlong: Literal["truncate", "drop"] = "truncate"
    packing: bool = Field(False, description="pack short examples into one sequence (no cross-attention)")
    padding_free: bool | Literal["auto"] = Field(
        "auto",
        description="flatten each micro-batch into one row without padding (varlen attention); "
        "auto: on a CUDA GPU for sft and pretrain",
    )
    max_train_examples: int | None = Field(
        None,
        gt=0,
        description="train on the first N rows of the dataset (in shard order; per dataset with data.mix)",
    )
    max_val_examples: int | None = Field(256, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        if self.path is None and not self.mix:
            raise ValueError("data.path is required (or data.mix: [{path: ..., weight: ...}, ...])")
        if self.path is not None and self.mix:
            raise ValueError("set data.path or data.mix, not both (put data.path into data.mix as one entry)")
        if self.mix and self.streaming is False:
            raise ValueError("data.mix is read streamed: remove data.streaming=false")
        return self


class OptimSettings(Config):
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="floor of the decay, as a fraction of lr")
    max_grad_norm: float | None = Field(1.0, gt=0)


class BatchSettings(Config):
    micro_batch: int = Field(4, gt=0, description="sequences per forward pass per process")
    global_batch: int = Field(16, gt=0, description="sequences per optimizer step, all processes together")


class EarlyStopping(Config):
    patience: int | None = Field(None, gt=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class Plateau(Config):
    patience: int | None = Field(None, gt=0, description="evaluations of rising val loss before lr is cut")
    factor: float = Field(0.5, gt=0, lt=1)


class CheckpointSettings(Config):
    every: int | None = Field(None, gt=0, description="save a resumable checkpoint every N steps")
    keep: int = Field(2, gt=0, description="keep the last K checkpoints")


class ResumeSettings(Config):
    """Where a run continues from. `resume: auto` (a bare string) is short for `resume.checkpoint: auto`."""

    checkpoint: str = Field(
        "auto",
        description="auto: the run folder's last checkpoint (refused if a key that shapes training changed) | "
        "never: start over | a step-* checkpoint folder",
    )
    allow_changes: list[str] = Field(
        default_factory=list,
        description="keys that shape training allowed to differ from the checkpoint's "
        "(with an explicit resume.checkpoint folder); a new lineage segment starts",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        return {"checkpoint": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _explicit(self) -> ResumeSettings:
        if self.allow_changes and self.checkpoint in ("auto", "never"):
            raise ValueError(
                f"resume.allow_changes needs an explicit checkpoint folder, not resume.checkpoint={self.checkpoint}: "
                "set resume.checkpoint=RUN/checkpoints/step-NNNNNNNN to continue deliberately"
            )
        return self


class TrackingSettings(Config):
    mlflow: bool = True
    tracking_uri: str | None = Field(None, description="default: sqlite in TUNELOOP_HOME")
    experiment: str = "tuneloop"
    system_metrics: bool = True
    tensorboard: bool = True
    wandb: bool | Literal["auto"] = Field("auto", description="auto: when installed and WANDB_API_KEY is set")


class DpoSettings(Config):
    beta: float = Field(0.1, gt=0)


class KtoSettings(Config):
    """KTO's sigmoid loss (Ethayarajh et al. 2024), with TRL's names and defaults."""

    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference")
    desirable_weight: float = Field(
        1.0, gt=0, description="weight of the desirable (thumbs-up) answers' loss"
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="weight of the undesirable (thumbs-down) answers' loss"
    )


class EvalSettings(Config):
    every: int | None = Field(None, gt=0, description="validation loss every N steps")
    final: bool = Field(True, description="run `tuneloop eval` on the validation set at the end")
    max_samples: int = Field(64, gt=0, description="generations scored in the final evaluation")
    max_new_tokens: int = Field(64, gt=0)


class TrainConfig(Config):
    model: str = Field("smollm2-135m-instruct", description="model reference (folder, store name, hub id)")
    objective: Literal["sft", "pretrain", "dpo", "kto"] = "sft"
    method: Literal["full", "lora", "qlora"] = "lora"
    data: DataSettings
    lora: LoraSettings = LoraSettings()
    qlora: QLoraSettings = QLoraSettings()
    optim: OptimSettings = OptimSettings()
    batch: BatchSettings = BatchSettings()
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs")
    eval: EvalSettings = EvalSettings()
    early_stopping: EarlyStopping = EarlyStopping()
    plateau: Plateau = Plateau()
    checkpoint: CheckpointSettings = CheckpointSettings()
    resume: ResumeSettings = Field(
        default_factory=ResumeSettings,
        description="auto | never | a checkpoint folder; resume.allow_changes=[key,...] to continue under changed keys",
    )
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="recompute layer activations in backward; auto: on a GPU, `plan` checkpoints the fewest "
        "layers that fit memory_budget_gib (none when all fit), off on a CPU",
    )
    checkpoint_layers: int | None = Field(
        None, ge=0, description="checkpoint only the first N decoder layers (selective; overrides auto)"
    )
    memory_budget_gib: float | None = Field(
        None, gt=0, description="GPU memory gradient_checkpointing=auto plans for (default: the whole GPU)"
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each decoder layer (regional compilation); auto: on a CUDA GPU"
    )
    fused_loss: bool = Field(
        True, description="LM-head cross-entropy in chunks, never holding the (tokens x vocab) logits"
    )
    liger: bool = Field(
        False, description="Liger kernels for RMSNorm, RoPE and SwiGLU (Llama-family, CUDA; the gpu extra)"
    )
    master_weights: bool = Field(
        True,
        description="full fine-tuning: fp32 master weights + fp32 AdamW states (false: pure bf16, half the memory)",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="several processes: ddp replicates the model; fsdp shards weights, grads and optimizer",
    )
    fit_check: bool = Field(
        True, description="on a GPU, refuse before loading a model that `plan` says will not fit"
    )
    dpo: DpoSettings = DpoSettings()
    kto: KtoSettings = KtoSettings()
    tracking: TrackingSettings = TrackingSettings()
    name: str | None = Field(None, description="run name (default: derived from model/objective/method)")
    output_dir: str | None = Field(None, description="default: TUNELOOP_HOME/runs/<name>")
    profile: bool = Field(False, description="record a torch profiler trace for a few steps")
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="in-memory data: processes that tokenize the dataset (0/1: this process); streamed "
        "data: DataLoader workers that read, tokenize and pack ahead of the training loop (0: in this "
        "process; 1 keeps its order; >= 2 partitions the rows per worker: another order, so it shapes "
        "the run). auto: 1 worker when streaming on CUDA, else 0 (on a CPU the worker competes with "
        "the step for the cores)",
    )

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 0 or more, or auto")
        return v

    device: str = Field("auto", description="auto | cpu | cuda")
    log_every: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.objective == "kto" and (self.data.streaming is True or self.data.mix):
            raise ValueError(
                "objective=kto pairs answers across the whole dataset: it cannot stream; "
                "set data.streaming=false and use data.path"
            )
        if self.objective in ("dpo", "kto") and self.data.packing:
            raise ValueError(
                f"data.packing does not apply to {self.objective} (answers are scored whole); "
                "set data.packing=false"
            )
        if self.strategy == "fsdp" and (self.method == "qlora" or self.objective in ("dpo", "kto")):
            raise ValueError("strategy=fsdp supports method full/lora with sft or pretrain; use strategy=ddp")
        if self.objective == "kto" and self.batch.global_batch < 2:
            raise ValueError(
                "objective=kto estimates its KL term from mismatched answers within a batch: "
                "batch.global_batch must be at least 2"
            )
        if self.batch.global_batch % self.batch.micro_batch:
            raise ValueError(
                f"batch.global_batch ({self.batch.global_batch}) must be a multiple of batch.micro_batch "
                f"({self.batch.micro_batch})"
            )
        return self

    def run_name(self) -> str:
        if self.name:
            return self.name
        base = self.model.rstrip("/").split("/")[-1]
        return f"{base}-{self.objective}-{self.method}"
