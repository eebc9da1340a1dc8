"""Fused linear + cross-entropy: the LM head's loss without ever holding the (tokens, vocab) logits.

For a 128k vocabulary the logits are the largest tensor of a training step: 2048 tokens x 128,256
x (2 B bf16 + 4 B fp32 upcast + 4 B fp32 grad) is 2.5 GiB per sequence. Like Liger's
FusedLinearCrossEntropy, the head runs chunk by chunk and each chunk's gradient (softmax - onehot)
is turned into the gradients of the hidden states and of the head weight right away, in the forward
pass; backward only scales them. Peak memory is one chunk of fp32 logits.

The head is swapped in place for the duration of one forward (`fused_head`): the model keeps its
parameter names and module tree (checkpoints, PEFT, FSDP hooks all see the same model), and HF's
`forward` returns our loss where it would return logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from tuneloop.resources.head_chunk import chunk_tokens

IGNORE = -100
# model types whose forward hands the head's output back untouched (no softcap, no logit scaling)
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2"}


class LinearCrossEntropy(torch.autograd.Function):
    """sum over label tokens of -log softmax(h @ W.T)[label], with grads computed in forward."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, lc = h[s : s + chunk], labels[s : s + chunk]
            logits = F.linear(hc, weight).float()  # autocast (when on) picks the matmul dtype
            lse = torch.logsumexp(logits, dim=-1)
            valid = lc != IGNORE
            target = lc.clamp(min=0)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            loss += ((lse - picked) * valid).sum()
            if not (need_h or need_w):
                continue
            # d loss / d logits = softmax - onehot, zero for ignored rows; built in place in `logits`
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(lc), device=grad.device), target] -= 1.0
            grad.mul_(valid[:, None])
            g = grad.to(hc.dtype if hc.dtype != torch.float32 else weight.dtype)
            if need_h:
                grad_h[s : s + chunk] = (g @ weight.to(g.dtype)).to(h.dtype)
            if need_w:
                grad_w += (g.t() @ hc.to(g.dtype)).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Summed next-token loss of hidden states `h` (N, H) under head `weight` (V, H) and `labels` (N,)."""
    if h.shape[0] != labels.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden states but {labels.shape[0]} labels")
    return LinearCrossEntropy.apply(h, weight, labels, chunk or chunk_tokens(weight.shape[0]))


def head_of(model: Any) -> torch.nn.Linear | None:
    """The model's output head when the fused loss can stand in for it, else None.

    None for heads it cannot replace exactly: an adapted head (a LoRA on lm_head), a head with a
    bias, or a model family whose forward post-processes the logits (softcapping, scaling).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return head


@contextlib.contextmanager
def fused_head(head: torch.nn.Linear, labels: torch.Tensor, chunk: int | None = None) -> Iterator[None]:
    """While open, `head(hidden)` returns the summed loss of `hidden[:, :-1]` against `labels[:, 1:]`.

    Position t predicts token t+1, as in `objectives.token_loss_sum`.
    """

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return linear_cross_entropy(h, head.weight, labels[:, 1:].reshape(-1), chunk)

    head.forward = forward  # an instance attribute: shadows Linear.forward, module tree untouched
    try:
        yield
    finally:
        del head.forward
