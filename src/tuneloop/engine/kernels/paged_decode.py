"""Decode attention straight from the paged KV cache: one query token per sequence.

PyTorch has no attention that reads a block table, and gathering each sequence's context into a
padded tensor (the prefill path) copies the whole KV cache every layer of every step. This kernel
walks the block table instead. One program per (sequence, KV head) serves all query heads of that
group (GQA), so each K/V tile is loaded once; online softmax in fp32 (flash-decoding without the
split, which batch-1 decode of short contexts does not need: the weights dominate there).

Shapes and sizes are static per call, so the kernel can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    Q,
    K,
    V,
    Out,
    BT,
    LENS,
    scale,
    stride_qb,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_btb,
    stride_ob,
    stride_oh,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    ctx = tl.load(LENS + b)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    gmask = g < GROUP
    heads = kvh * GROUP + g
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=gmask[:, None], other=0.0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    for start in range(0, ctx, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        nmask = n < ctx
        page = tl.load(BT + b * stride_btb + n // BLOCK_SIZE, mask=nmask, other=0)
        slot = page.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE
        kv_off = slot[:, None] * stride_kt + kvh * stride_kh + d[None, :]
        k = tl.load(K + kv_off, mask=nmask[:, None], other=0.0)
        v = tl.load(V + kv_off, mask=nmask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (GROUP_PAD, BLOCK_N)
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m = m_new
    out = acc / l_sum[:, None]
    tl.store(
        Out + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
        out.to(Out.dtype.element_ty),
        mask=gmask[:, None],
    )


def paged_decode_attention(
    q: torch.Tensor,  # (B, H, D): this step's query of each sequence
    k_cache: torch.Tensor,  # (slots, KVH, D)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    context_lens: torch.Tensor,  # (B,) int32: tokens in the cache, this step's included
    block_size: int,
    scale: float,
) -> torch.Tensor:
    B, H, D = q.shape
    kvh = k_cache.shape[1]
    group = H // kvh
    out = torch.empty_like(q)
    assert k_cache.stride(2) == 1 and q.stride(2) == 1, "head dim must be contiguous"
    _paged_decode_kernel[(B, kvh)](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        context_lens,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        BLOCK_SIZE=block_size,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        D=D,
        BLOCK_N=max(64, block_size),
    )
    return out
