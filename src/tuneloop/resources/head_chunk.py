"""How many tokens the fused LM-head loss (`train/linear_ce.py`) handles per chunk; `plan` budgets the
same chunk. Here, not in train/, so that the plan needs nothing from train (train asks the plan)."""

from __future__ import annotations


def chunk_tokens(vocab: int, budget_bytes: int = 256 * 2**20) -> int:
    """Tokens per chunk so one chunk's fp32 logits take about `budget_bytes` (at least 64)."""
    return max(64, budget_bytes // (4 * vocab))
