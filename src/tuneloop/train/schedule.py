"""Learning rate as a pure function of the step (warmup, then cosine / linear / constant).

A plateau cut multiplies it by a scale kept in the trainer state, so resuming restores both exactly.
"""

from __future__ import annotations

import math

from tuneloop.train.config import OptimSettings


def warmup_steps(optim: OptimSettings, total_steps: int) -> int:
    if optim.warmup_steps is not None:
        return min(optim.warmup_steps, total_steps)
    return int(optim.warmup_ratio * total_steps)


def lr_at(step: int, optim: OptimSettings, total_steps: int, scale: float = 1.0) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    warm = warmup_steps(optim, total_steps)
    if step < warm:
        return optim.lr * scale * (step + 1) / warm
    if optim.schedule == "constant":
        factor = 1.0
    else:
        progress = (step - warm) / max(1, total_steps - warm)
        progress = min(1.0, progress)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        factor = optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay
    return optim.lr * scale * factor
