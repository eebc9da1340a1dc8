"""Magnitude pruning of linear layers: unstructured to a sparsity, or 2:4 semi-structured.

Unstructured: in each linear layer (lm_head excluded) the smallest-magnitude fraction of weights
is set to zero. The tensors stay dense, so the file is as large and the matmuls as slow as before
unless something downstream exploits the zeros; the report measures exactly that.

2:4: in every group of 4 consecutive input weights the 2 smallest are zeroed, and on an NVIDIA GPU
with sparse tensor cores (compute capability 8.0+) the weights become `to_sparse_semi_structured`
tensors that the hardware multiplies at up to 2x. There is no such kernel on a CPU: refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    import torch

PATTERNS = ("unstructured", "2:4")
PRUNE_FILE = "prune.json"  # written next to a pruned export: the step's settings and the sparsity reached


def check_prune_args(sparsity: float | None, pattern: str, device: str) -> None:
    """Refuse impossible requests before anything is loaded."""
    if pattern not in PATTERNS:
        raise TuneloopError(f"unknown --prune-pattern '{pattern}'", hint=f"use one of {', '.join(PATTERNS)}")
    if pattern == "2:4":
        _check_semi_structured_hardware(device)
        if sparsity not in (None, 0.5):
            raise TuneloopError(
                f"2:4 pruning is always 50% sparse, not {sparsity}", hint="drop the sparsity or use 0.5"
            )
    elif sparsity is None or not 0.0 < sparsity < 1.0:
        raise TuneloopError(
            f"--prune sparsity must be between 0 and 1 (exclusive), got {sparsity}",
            hint="e.g. --prune 0.3 zeroes the 30% smallest weights of each linear layer",
        )


def _check_semi_structured_hardware(device: str) -> None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise TuneloopError(
            "2:4 semi-structured sparsity needs an NVIDIA GPU with sparse tensor cores; this run is on the CPU",
            hint="run on a GPU with compute capability 8.0+ (A100, H100), or use --prune SPARSITY (unstructured)",
        )
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if major < 8:
        raise TuneloopError(
            f"2:4 sparsity needs compute capability 8.0+, this GPU has {major}.{minor}",
            hint="use --prune SPARSITY (unstructured) on this GPU",
        )


def prunable(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Linear layers by name, lm_head excluded (tied to the embeddings in small models)."""
    import torch

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    }


def prune_unstructured(model: torch.nn.Module, sparsity: float) -> float:
    """Zero the smallest |w| of each linear layer in place; returns the sparsity reached."""
    import torch

    with torch.no_grad():
        for module in prunable(model).values():
            w = module.weight
            k = round(sparsity * w.numel())
            if k == 0:
                continue
            threshold = w.abs().flatten().kthvalue(k).values
            w.masked_fill_(w.abs() <= threshold, 0.0)  # ties at the threshold go too (rare in floats)
    return linear_sparsity(model)


def prune_2_4(model: torch.nn.Module) -> float:
    """Keep the 2 largest of every 4 input weights; returns the sparsity reached (0.5)."""
    import torch

    with torch.no_grad():
        for module in prunable(model).values():
            w = module.weight  # (out, in): groups of 4 run along the input dimension
            groups = w.reshape(-1, 4)
            drop = groups.abs().topk(2, dim=1, largest=False).indices
            groups.scatter_(1, drop, 0.0)
    return linear_sparsity(model)


def to_semi_structured(model: torch.nn.Module) -> int:
    """Swap 2:4-pruned weights for sparse tensor-core tensors (CUDA, fp16/bf16); returns how many."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    count = 0
    for module in prunable(model).values():
        w = module.weight
        if w.shape[0] % 64 == 0 and w.shape[1] % 64 == 0:  # the kernel's minimum tile
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
            count += 1
    return count


def linear_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exact zeros over all prunable linear weights."""
    zeros = total = 0
    for module in prunable(model).values():
        w = module.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def pattern_of(folder: Path) -> str | None:
    """The pruning pattern recorded in an export folder's prune.json (None: not pruned)."""
    file = Path(folder) / PRUNE_FILE
    return json.loads(file.read_text()).get("pattern") if file.is_file() else None
