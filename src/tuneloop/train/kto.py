"""KTO: learning from unpaired desirable and undesirable answers (thumbs up / thumbs down).

The loss is TRL's `KTOTrainer` with `loss_type="kto"` (Ethayarajh et al. 2024, eq. 7), computed by
our trainer. For an answer y to a prompt x with log-ratio r = log pi(y|x) - log ref(y|x):

    desirable:    desirable_weight   * (1 - sigmoid(beta * (r - z)))
    undesirable:  undesirable_weight * (1 - sigmoid(beta * (z - r)))

z estimates KL(pi || ref): the mean of log pi(y'|x) - log ref(y'|x) over mismatched pairs (each
prompt with the previous example's completion, the first with the last's: TRL's rotation),
detached and clamped at 0. As in TRL the loss is the mean over a batch's examples. Our batch is
the global batch (all micro-batches and processes): z is computed over it before any backward
pass (one more no-grad pass, over the mismatched pairs), so the micro-batch size and an
out-of-memory retry change nothing; TRL estimates z per device batch.

The reference is the model training started from: with LoRA/QLoRA the same model with its adapter
switched off (as for DPO), with full fine-tuning a frozen copy (the weights twice in memory).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tuneloop.train import distributed
from tuneloop.train.batching import collate, micro_batches
from tuneloop.train.config import KtoSettings, TrainConfig
from tuneloop.train.dataset import Example, KtoExample
from tuneloop.train.objectives import sequence_logps

if TYPE_CHECKING:
    from tuneloop.train.trainer import Trainer

log = logging.getLogger("tuneloop.train")


def kto_losses(
    policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, s: KtoSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) weighted per-example KTO losses and (B,) implicit rewards beta * r (detached).

    `policy`, `reference`: (B,) summed log-probabilities of each completion; `desirable`: (B,) bool.
    """
    ratio = policy - reference
    losses = torch.where(
        desirable,
        s.desirable_weight * (1 - F.sigmoid(s.beta * (ratio - kl))),
        s.undesirable_weight * (1 - F.sigmoid(s.beta * (kl - ratio))),
    )
    return losses, (s.beta * ratio).detach()


def mismatched(examples: list[KtoExample]) -> list[Example]:
    """Prompt i with the completion of example i-1 (prompt 0 with the last one's): TRL's KL pairs."""
    return [e.sequence(completion_of=examples[i - 1]) for i, e in enumerate(examples)]


class Reference:
    """The frozen reference policy: the adapter switched off, or a frozen copy of the full weights."""

    def __init__(self, model: Any):
        self.frozen = None
        if not hasattr(model, "disable_adapter"):
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def __call__(self, model: Any) -> Iterator[Any]:
        if self.frozen is not None:
            yield self.frozen
            return
        with model.disable_adapter():
            yield model


class KtoStep:
    """The KTO part of one optimizer step (and of the validation loss) for `Trainer`."""

    def __init__(self, cfg: TrainConfig, model: Any, train: list[KtoExample]):
        self.s = cfg.kto
        self.global_batch = cfg.batch.global_batch
        self.reference = Reference(model)
        self.metrics: dict[str, float] = {}
        warn_if_unbalanced(train, cfg.kto)

    def accumulate(self, t: Trainer, examples: list[KtoExample]) -> tuple[float, int]:
        """Forward/backward over this process's share of a global batch; (mean loss, tokens)."""
        n_total = int(distributed.sum_scalars([float(len(examples))], t.dist, t.device)[0])
        kl = self._kl(t, examples, t.state.micro_batch, reduce=True)
        sums = self._losses(t, examples, t.state.micro_batch, kl, n_total, backward=True)
        distributed.sum_gradients(t.params, t.dist)
        loss, tokens, r_d, n_d, r_u, n_u = distributed.sum_scalars(sums, t.dist, t.device)
        self.metrics = {
            "train/kl": float(kl),
            "train/rewards_desirable": r_d / max(1.0, n_d),
            "train/rewards_undesirable": r_u / max(1.0, n_u),
        }
        return loss / max(1, n_total), int(tokens)

    def validation_loss(self, t: Trainer) -> float:
        """The mean KTO loss over the validation set, z estimated per chunk of a global batch's size."""
        total, n = 0.0, 0
        t.model.eval()
        with torch.no_grad():
            for chunk in micro_batches(t.val, self.global_batch):
                kl = self._kl(t, chunk, max(1, t.state.micro_batch), reduce=False)
                sums = self._losses(t, chunk, max(1, t.state.micro_batch), kl, len(chunk), backward=False)
                total, n = total + sums[0], n + len(chunk)
        t.model.train()
        return total / max(1, n)

    def _kl(self, t: Trainer, examples: list[KtoExample], micro: int, reduce: bool) -> torch.Tensor:
        """z: mean log-ratio of the mismatched pairs, clamped at 0 (no gradient flows through it)."""
        diff, n = 0.0, 0
        with torch.no_grad():
            for chunk in micro_batches(mismatched(examples), micro):
                batch = t._to_device(collate(chunk, t.pad_id))
                with t._autocast():
                    policy = sequence_logps(t.model, batch)
                with self.reference(t.model) as ref, t._autocast():
                    reference = sequence_logps(ref, batch)
                diff, n = diff + float((policy - reference).sum()), n + len(chunk)
        if reduce:
            diff, n = distributed.sum_scalars([diff, float(n)], t.dist, t.device)
        return torch.tensor(max(0.0, diff / max(1.0, n)), device=t.device)

    def _losses(
        self,
        t: Trainer,
        examples: list[KtoExample],
        micro: int,
        kl: torch.Tensor,
        n_total: int,
        backward: bool,
    ) -> list[float]:
        """[loss sum, tokens, desirable reward sum, desirables, undesirable reward sum, undesirables]."""
        sums = [0.0] * 6
        for chunk in micro_batches(examples, micro):
            batch = t._to_device(collate([e.sequence() for e in chunk], t.pad_id))
            desirable = torch.tensor([e.label for e in chunk], device=t.device)
            with torch.no_grad(), self.reference(t.model) as ref, t._autocast():
                reference = sequence_logps(ref, batch)
            with contextlib.nullcontext() if backward else torch.no_grad(), t._autocast():
                policy = sequence_logps(t.model, batch)
            losses, rewards = kto_losses(policy, reference, desirable, kl, self.s)
            if backward:
                t._backward(losses.sum() / n_total)
            sums[0] += float(losses.detach().sum())
            sums[1] += int(batch["attention_mask"].sum())
            sums[2] += float(rewards[desirable].sum())
            sums[3] += int(desirable.sum())
            sums[4] += float(rewards[~desirable].sum())
            sums[5] += int((~desirable).sum())
        return sums


def warn_if_unbalanced(examples: list[KtoExample], s: KtoSettings) -> None:
    """The KTO paper (eq. 8) wants desirable_weight * n_D / (undesirable_weight * n_U) in [1, 4/3]."""
    n_d = sum(1 for e in examples if e.label)
    n_u = len(examples) - n_d
    if not examples:
        return
    if n_d == 0 or n_u == 0:
        side = (
            "desirable: nothing says what to avoid"
            if n_u == 0
            else "undesirable: nothing says what to prefer"
        )
        log.warning("all %d KTO examples are %s", len(examples), side)
        return
    ratio = s.desirable_weight * n_d / (s.undesirable_weight * n_u)
    if not 1.0 <= ratio <= 4 / 3:
        log.warning(
            "KTO: %d desirable and %d undesirable examples with weights %g/%g give a ratio of %.2f; the KTO "
            "paper recommends 1 to 4/3: set kto.desirable_weight=%.2f or kto.undesirable_weight=%.2f",
            n_d,
            n_u,
            s.desirable_weight,
            s.undesirable_weight,
            ratio,
            s.undesirable_weight * n_u / n_d,
            s.desirable_weight * n_d / n_u,
        )
