"""torch's FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`), whatever its release.

Training's padding-free packed attention (train/attention.py) and the engine's varlen prefill
(engine/attention.py) both call it; it sits here, below both, so neither imports the other.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch


def _varlen_params() -> frozenset[str] | None:
    """Parameter names of torch's varlen_attn, or None where this torch has none (< 2.10).

    Its signature moved between releases: 2.10 takes `is_causal`; later ones `window_size=(-1, 0)`
    and `scale`; `enable_gqa` arrived after 2.11.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return frozenset(inspect.signature(varlen_attn).parameters)


# read once at import, so the hot path (maybe under torch.compile) only reads a constant
VARLEN_PARAMS = _varlen_params()


def causal_varlen_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float,
) -> torch.Tensor:
    """torch's varlen_attn, causal (aligned to the end of each key range), whatever its release.

    q (N, Hq, D), k/v (K, Hkv, D). The signature moved: 2.10 takes `is_causal`, later ones
    `window_size=(-1, 0)` and `scale`, `enable_gqa` arrived after 2.11. The engine's prefill uses it too.
    """
    from torch.nn.attention.varlen import varlen_attn

    params = VARLEN_PARAMS or frozenset()
    kwargs: dict[str, Any] = {}
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif groups > 1:  # older wrappers promise nothing for Hkv < Hq: give every query head its kv head
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, q.shape[-1] ** -0.5):
        q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's default is 1/sqrt(D)
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)
