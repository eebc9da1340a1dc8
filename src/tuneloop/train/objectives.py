"""Losses as sums over label tokens, so any split into micro-batches or processes gives the same gradient.

The trainer divides by the number of label tokens in the whole global batch (all micro-batches, all
processes) — not by each micro-batch's own count, which would weight short examples more.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tuneloop.train import linear_ce
from tuneloop.train.dataset import IGNORE

# a padding-free batch (batching.flatten) also carries the document bounds, so attention needs no sync
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
)


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    return model(**kwargs, use_cache=False).logits  # (B, T, V)


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], fused: bool = False
) -> tuple[torch.Tensor, int]:
    """(sum of next-token NLL over label tokens, number of label tokens).

    `fused`: compute the loss chunk by chunk inside the head (linear_ce), never materializing the
    (B, T, V) logits, where the model allows it; the result is the same sum.
    """
    labels = batch["labels"][:, 1:]
    head = linear_ce.head_of(model) if fused else None
    if head is not None:
        with linear_ce.fused_head(head, batch["labels"]):
            loss = forward_logits(model, batch)  # the patched head returns the summed loss
        return loss, int((labels != IGNORE).sum())
    logits = forward_logits(model, batch)[:, :-1]  # (B, T-1, V): position t predicts token t+1
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((labels != IGNORE).sum())


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) summed log-probability of each sequence's label tokens."""
    logits = forward_logits(model, batch)[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss (Rafailov et al. 2023) and the implicit rewards of both answers."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()
