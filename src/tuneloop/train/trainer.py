"""The training loop: accumulate, clip, step; evaluate, stop early, cut the lr on a plateau; checkpoint.

It holds no setup code (the recipe wires model, data and tracking) and no policy about the data
order (batching.StepPlan decides that from the step number alone).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import load_file, save_file

from tuneloop.errors import TuneloopError
from tuneloop.train import attention, checkpoint, distributed
from tuneloop.train.batching import StepPlan, collate, micro_batches, shard
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import IGNORE, Example, PairExample
from tuneloop.train.distributed import Dist
from tuneloop.train.fsdp import is_sharded
from tuneloop.train.kto import KtoStep
from tuneloop.train.loader import LoadedMixture
from tuneloop.train.mixture import Mixture
from tuneloop.train.model_setup import Precision, use_padding_free
from tuneloop.train.objectives import dpo_losses, sequence_logps, token_loss_sum
from tuneloop.train.profiling import StepProfiler
from tuneloop.train.schedule import lr_at
from tuneloop.train.tracking import Tracker

log = logging.getLogger("tuneloop.train")


# Steps of each start that compile kernels, autotune and grow the allocator: a 2-step warm-up is what
# benchmarks/train_gpu*.py drop too (on an H100 the first steps of a compiled run take ~3x the rest).
WARMUP_STEPS = 2


@dataclass
class TrainState:
    """Everything besides weights/optimizer/RNG that an exact resume needs."""

    step: int = 0  # optimizer steps done
    micro_batch: int = 1
    lr_scale: float = 1.0
    best_val: float | None = None
    evals_without_improvement: int = 0
    evals_rising: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    train_seconds: float = 0.0  # over every segment (a resumed run counts its earlier starts too)
    # the first WARMUP_STEPS of every start (compilation, autotuning, the allocator), kept apart so the
    # summary's tokens/s is the steady speed
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    warmup_tokens: int = 0
    mlflow_run_id: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # segments.py: lineage of the settings
    oom_backoffs: list[dict[str, int]] = field(default_factory=list)
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    grad_norm: list[tuple[int, float]] = field(default_factory=list)
    step_seconds: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    lr_cuts: list[int] = field(default_factory=list)
    data_position: dict[str, Any] | None = None  # streamed data: every process's position (mixture.py)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def throughput(self) -> dict[str, Any]:
        """tokens_per_s: the steady speed, without each start's warm-up steps (all steps when every
        step was warm-up, i.e. a run of <= 2 steps per start); tokens_per_s_overall counts every step."""
        steady_seconds = self.train_seconds - self.warmup_seconds
        steady_steps = self.step - self.warmup_steps
        overall = self.tokens_seen / max(self.train_seconds, 1e-9)
        steady = (
            (self.tokens_seen - self.warmup_tokens) / steady_seconds
            if steady_steps > 0 and steady_seconds > 0
            else overall
        )
        return {
            "tokens_per_s": steady,
            "tokens_per_s_overall": overall,
            "warmup_steps": self.warmup_steps,
            "warmup_seconds": round(self.warmup_seconds, 4),
            "warmup_tokens": self.warmup_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        s = cls(**d)
        s.train_loss = [tuple(x) for x in s.train_loss]  # type: ignore[misc]
        s.grad_norm = [tuple(x) for x in s.grad_norm]  # type: ignore[misc]
        s.step_seconds = [tuple(x) for x in s.step_seconds]  # type: ignore[misc]
        s.val_loss = [tuple(x) for x in s.val_loss]  # type: ignore[misc]
        return s


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        train: list[Any] | Mixture | LoadedMixture,
        val: list[Any],
        *,
        pad_id: int,
        device: str,
        precision: Precision,
        dist: Dist,
        run_dir: Path,
        tracker: Tracker,
        profiler: StepProfiler | None = None,
    ):
        self.cfg, self.model, self.train, self.val = cfg, model, train, val
        self.pad_id, self.device, self.precision, self.dist = pad_id, device, precision, dist
        self.run_dir, self.tracker, self.profiler = run_dir, tracker, profiler
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            **_fused_optimizer(self.params, device),
        )
        self.scaler = torch.amp.GradScaler("cuda") if precision.needs_scaler else None
        # streamed data (a Mixture, or one in DataLoader workers) hands each process its share of a step;
        # a list is indexed by the plan
        self.stream = train if isinstance(train, (Mixture, LoadedMixture)) else None
        self._data_at: dict[int, dict[str, Any]] = {}  # step -> the stream's position when it starts
        n = self.stream.estimated_examples if self.stream else len(train)
        self.plan = StepPlan.build(n, cfg.batch.global_batch, cfg.seed, cfg.epochs, cfg.max_steps)
        if cfg.batch.global_batch % dist.world:
            raise TuneloopError(
                f"batch.global_batch ({cfg.batch.global_batch}) must be divisible by the number of processes ({dist.world})"
            )
        self.state = TrainState(micro_batch=cfg.batch.micro_batch)
        self.kto = KtoStep(cfg, model, train) if cfg.objective == "kto" else None
        self.ckpt_dir = run_dir / "checkpoints"
        self.padding_free = use_padding_free(cfg, device)
        self.sharded = is_sharded(model)
        # each process's loss is a share of the global sum: our all-reduce sums (x1), FSDP averages (x world)
        self._reduce_scale = dist.world if self.sharded else 1

    # ------------------------------------------------------------ public

    def resume(self, folder: Path) -> None:
        data = checkpoint.load(folder, self.model, self.optimizer, self.dist.rank, self.scaler)
        self.state = TrainState.from_dict(data)
        if self.stream is not None:
            self.stream.restore(self.state.data_position, self.dist.rank, self.dist.world)
        log.info("resumed from %s at step %d", folder, self.state.step)

    def fit(self) -> TrainState:
        self._steps_this_start = 0
        while self.state.step < self.plan.total_steps and not self.state.stopped_early:
            started = time.perf_counter()
            loss, tokens, grad_norm = self._optimizer_step(self.state.step)
            seconds = time.perf_counter() - started
            self._count(tokens, seconds)
            self._after_step(loss, tokens, grad_norm, seconds)
        return self.state

    def _count(self, tokens: int, seconds: float) -> None:
        s = self.state
        s.step += 1
        s.tokens_seen += tokens
        s.train_seconds += seconds
        self._steps_this_start += 1
        if self._steps_this_start <= WARMUP_STEPS:
            s.warmup_steps += 1
            s.warmup_seconds += seconds
            s.warmup_tokens += tokens
        if s.segments:
            segment = s.segments[-1]
            segment["to_step"] = s.step
            segment["train_seconds"] = round(segment["train_seconds"] + seconds, 4)
            segment["tokens"] += tokens

    # ------------------------------------------------------------ one optimizer step

    def _optimizer_step(self, step: int) -> tuple[float, int, float]:
        lr = lr_at(step, self.cfg.optim, self.plan.total_steps, self.state.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mine = self._my_examples(step)
        loss, tokens = self._accumulate_with_backoff(mine)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens, grad_norm

    def _my_examples(self, step: int) -> list[Any]:
        """This process's share of the global batch of `step`."""
        if self.stream is not None:
            # the position before and after this step's draw: a checkpoint taken when the step was cut
            # short (Ctrl-C) keeps the former, so the resumed run redraws the same examples
            before = self.stream.state()
            mine = self.stream.take(self.cfg.batch.global_batch // self.dist.world)
            self._data_at = {step: before, step + 1: self.stream.state()}
            return mine
        return [self.train[i] for i in shard(self.plan.batch(step), self.dist.rank, self.dist.world)]

    def _accumulate_with_backoff(self, examples: list[Any]) -> tuple[float, int]:
        """Forward/backward over micro-batches; on CUDA OOM halve the micro-batch and redo the step."""
        while True:
            oom = False
            try:
                result = self._accumulate(examples)
            except torch.OutOfMemoryError:
                if self.sharded:  # the other processes wait inside a collective: they cannot retry with us
                    raise TuneloopError(
                        "out of GPU memory under FSDP",
                        hint="lower batch.micro_batch (the effective batch stays batch.global_batch), turn on "
                        "gradient_checkpointing, or use more GPUs",
                    ) from None
                oom, result = True, (0.0, 0)
            if not distributed.any_flag(oom, self.dist, self.device):
                return result
            self._back_off()

    def _back_off(self) -> None:
        old = self.state.micro_batch
        if old == 1:
            raise TuneloopError(
                "out of GPU memory even with micro-batch 1",
                hint="turn on gradient_checkpointing, use method=qlora, lower data.max_length, or use more GPUs "
                "(`tuneloop plan` estimates what fits)",
            )
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.state.micro_batch = old // 2
        self.state.oom_backoffs.append({"step": self.state.step, "micro_batch": self.state.micro_batch})
        log.warning(
            "CUDA out of memory at step %d: micro-batch %d -> %d, accumulation doubled (same effective batch)",
            self.state.step,
            old,
            self.state.micro_batch,
        )
        self.tracker.log({"train/micro_batch": self.state.micro_batch}, self.state.step)

    def _accumulate(self, examples: list[Any]) -> tuple[float, int]:
        if self.cfg.objective == "dpo":
            return self._accumulate_dpo(examples)
        if self.kto is not None:
            return self.kto.accumulate(self, examples)
        # normalize by the label tokens of the whole global batch, counted before any forward pass
        local = sum(sum(1 for t in e.labels[1:] if t != -100) for e in examples)
        total = int(distributed.sum_scalars([float(local)], self.dist, self.device)[0])
        loss_sum, tokens = 0.0, 0
        chunks = self._chunks(examples, self.state.micro_batch)
        for i, chunk in enumerate(chunks):
            if self.sharded:  # FSDP reduce-scatters once, on the last micro-batch
                self.model.set_requires_gradient_sync(i == len(chunks) - 1)
            flat = self.padding_free and _ragged(chunk)
            if self.padding_free:
                attention.use_rows(self.model, rows=not flat)
            batch = self._to_device(collate(chunk, self.pad_id, padding_free=flat))
            with self._autocast():
                loss, n = token_loss_sum(self.model, batch, fused=self.cfg.fused_loss)
            self._backward(loss * self._reduce_scale / total)
            # summed on the device: one host sync per step, not one per micro-batch
            loss_sum, tokens = loss_sum + loss.detach(), tokens + n
        loss_sum = float(loss_sum)
        if not self.sharded:
            distributed.sum_gradients(self.params, self.dist)
        inputs = sum(len(e.input_ids) for e in examples)  # throughput counts every input token, as HF does
        loss_sum, tokens, inputs = distributed.sum_scalars(
            [loss_sum, float(tokens), float(inputs)], self.dist, self.device
        )
        return loss_sum / max(1.0, tokens), int(inputs)

    def _chunks(self, examples: list[Any], micro: int) -> list[list[Any]]:
        """Micro-batches; under FSDP every process must run as many forward passes as the others
        (each one is a collective), so short shares are padded with label-free dummies (zero loss)."""
        chunks = micro_batches(examples, micro)
        if not self.sharded:
            return chunks
        most = distributed.max_int(len(chunks), self.dist, self.device)
        dummy = Example([self.pad_id, self.pad_id], [IGNORE, IGNORE])
        return chunks + [[dummy]] * (most - len(chunks))

    def _accumulate_dpo(self, pairs: list[PairExample]) -> tuple[float, int]:
        n_pairs = int(distributed.sum_scalars([float(len(pairs))], self.dist, self.device)[0])
        loss_sum, tokens, correct = 0.0, 0, 0.0
        for chunk in micro_batches(pairs, self.state.micro_batch):
            both = [p.chosen for p in chunk] + [p.rejected for p in chunk]
            batch = self._to_device(collate(both, self.pad_id))
            with torch.no_grad(), self._reference(), self._autocast():
                ref = sequence_logps(self.model, batch)
            with self._autocast():
                policy = sequence_logps(self.model, batch)
            k = len(chunk)
            losses, r_chosen, r_rejected = dpo_losses(
                policy[:k], policy[k:], ref[:k], ref[k:], self.cfg.dpo.beta
            )
            self._backward(losses.sum() * self._reduce_scale / n_pairs)
            loss_sum += losses.sum().item()
            correct += (r_chosen > r_rejected).float().sum().item()
            tokens += (
                int(batch["attention_mask"].sum())
                if batch["attention_mask"].dim() == 2
                else batch["input_ids"].numel()
            )
        distributed.sum_gradients(self.params, self.dist)
        loss_sum, tokens, correct = distributed.sum_scalars(
            [loss_sum, float(tokens), correct], self.dist, self.device
        )
        self._last_dpo_accuracy = correct / max(1, n_pairs)
        return loss_sum / max(1, n_pairs), int(tokens)

    def _reference(self) -> Any:
        """The frozen reference policy for DPO: the base model with the adapter switched off."""
        if hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        raise TuneloopError("objective=dpo is supported with method=lora or qlora", hint="set method=lora")

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _clip(self) -> float:
        # with FSDP the gradients are DTensors and the norm is a DTensor: .full_tensor() gathers it
        max_norm = self.cfg.optim.max_grad_norm if self.cfg.optim.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _autocast(self) -> Any:
        if self.precision.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=self.precision.autocast
        )

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # padding-free batches carry plain ints too (max_length_q/k)
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    # ------------------------------------------------------------ after each step

    def _after_step(self, loss: float, tokens: int, grad_norm: float, seconds: float) -> None:
        step = self.state.step
        self.state.train_loss.append((step, loss))
        self.state.grad_norm.append((step, grad_norm))
        self.state.step_seconds.append((step, round(seconds, 4)))
        if self.profiler is not None:
            self.profiler.step()
        if step % self.cfg.log_every == 0 or step == self.plan.total_steps:
            metrics = {
                "train/loss": loss,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/grad_norm": grad_norm,
                "train/tokens_per_s": tokens / max(seconds, 1e-9),
                "train/epoch": step / self.plan.steps_per_epoch,
                "train/memory_gib": _memory_gib(self.device),
            }
            if self.cfg.objective == "dpo":
                metrics["train/reward_accuracy"] = self._last_dpo_accuracy
            if self.kto is not None:
                metrics.update(self.kto.metrics)
            self.tracker.log(metrics, step)
            if self.dist.main:
                log.info(
                    "step %d/%d loss %.4f lr %.2e grad %.3f %.0f tok/s",
                    step,
                    self.plan.total_steps,
                    loss,
                    metrics["train/lr"],
                    grad_norm,
                    metrics["train/tokens_per_s"],
                )
        if (
            self.cfg.eval.every
            and (step % self.cfg.eval.every == 0 or step == self.plan.total_steps)
            and self.val
        ):
            self._evaluate(step)
        if (
            self.cfg.checkpoint.every
            and step % self.cfg.checkpoint.every == 0
            and step < self.plan.total_steps
        ):
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        if self.tracker.run_id:
            self.state.mlflow_run_id = self.tracker.run_id
        if self.stream is not None:  # a collective: every process saves
            mine = self._data_at.get(self.state.step) or self.stream.state()
            ranks = distributed.gather_objects(mine, self.dist)
            self.state.data_position = {"world": self.dist.world, "ranks": ranks}
        folder = self.ckpt_dir / f"{checkpoint.PREFIX}{self.state.step:08d}"
        return checkpoint.save(
            folder,
            self.model,
            self.optimizer,
            self.state.to_dict(),
            self.dist.rank,
            self.dist.world,
            self.cfg.checkpoint.keep,
            self.scaler,
        )

    def validation_loss(self) -> float:
        if self.cfg.objective == "dpo":
            return self._validation_dpo()
        if self.kto is not None:
            return self.kto.validation_loss(self)
        mine = shard(list(range(len(self.val))), self.dist.rank, self.dist.world)
        loss_sum, tokens = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for chunk in self._chunks([self.val[i] for i in mine], max(1, self.state.micro_batch)):
                with self._autocast():
                    batch = self._to_device(collate(chunk, self.pad_id))
                    loss, n = token_loss_sum(self.model, batch, fused=self.cfg.fused_loss)
                loss_sum, tokens = loss_sum + loss.item(), tokens + n
        self.model.train()
        loss_sum, tokens = distributed.sum_scalars([loss_sum, float(tokens)], self.dist, self.device)
        return loss_sum / max(1.0, tokens)

    def _validation_dpo(self) -> float:
        total, n = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for chunk in micro_batches(self.val, max(1, self.state.micro_batch)):
                batch = self._to_device(
                    collate([p.chosen for p in chunk] + [p.rejected for p in chunk], self.pad_id)
                )
                with self._reference(), self._autocast():
                    ref = sequence_logps(self.model, batch)
                with self._autocast():
                    pol = sequence_logps(self.model, batch)
                k = len(chunk)
                losses, _, _ = dpo_losses(pol[:k], pol[k:], ref[:k], ref[k:], self.cfg.dpo.beta)
                total, n = total + losses.sum().item(), n + k
        self.model.train()
        return total / max(1, n)

    def _evaluate(self, step: int) -> None:
        val = self.validation_loss()
        self.state.val_loss.append((step, val))
        self.tracker.log({"val/loss": val, "val/perplexity": math.exp(min(val, 50))}, step)
        s, es, pl = self.state, self.cfg.early_stopping, self.cfg.plateau
        previous = s.val_loss[-2][1] if len(s.val_loss) > 1 else None
        if s.best_val is None or val < s.best_val - es.min_delta:
            s.best_val, s.evals_without_improvement = val, 0
            self._save_best()
        else:
            s.evals_without_improvement += 1
        s.evals_rising = s.evals_rising + 1 if previous is not None and val > previous else 0
        if pl.patience and s.evals_rising >= pl.patience:
            s.lr_scale *= pl.factor
            s.evals_rising = 0
            s.lr_cuts.append(step)
            log.warning(
                "validation loss rose %d evaluations in a row: lr scale -> %.3g", pl.patience, s.lr_scale
            )
            self.tracker.log({"train/lr_scale": s.lr_scale}, step)
        if es.patience and s.evals_without_improvement >= es.patience:
            s.stopped_early = True
            log.warning("early stopping at step %d: no improvement in %d evaluations", step, es.patience)

    def _save_best(self) -> None:
        """Keep the trainable weights of the best validation loss (restored at the end when stopping early)."""
        if not self.cfg.early_stopping.patience:
            return
        weights = checkpoint.trainable_state(self.model) if self.sharded or self.dist.main else {}
        if self.dist.main:
            save_file(weights, str(self.run_dir / "best.safetensors"))

    def restore_best(self) -> bool:
        path = self.run_dir / "best.safetensors"
        if self.dist.world > 1:
            torch.distributed.barrier()  # process 0 may still be writing it
        if not (self.cfg.early_stopping.patience and path.is_file()):
            return False
        checkpoint.load_trainable(self.model, load_file(str(path)))
        return True


def _ragged(examples: list[Any]) -> bool:
    """Would rows of this micro-batch carry padding or packed pieces (what flattening removes)?"""
    return any(e.segments for e in examples) or len({len(e.input_ids) for e in examples}) > 1


def _fused_optimizer(params: list[Any], device: str) -> dict[str, Any]:
    """AdamW's fused CUDA kernel: one launch for all parameters instead of a few per tensor group."""
    if device.startswith("cuda") and params and all(p.is_cuda and p.is_floating_point() for p in params):
        from torch.distributed.tensor import DTensor

        if not any(isinstance(p, DTensor) for p in params):  # FSDP2 shards: foreach handles DTensors
            return {"fused": True}
    return {}


def _memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30
