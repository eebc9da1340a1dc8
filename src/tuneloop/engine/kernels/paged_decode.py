"""Decode attention straight from the paged KV cache: one query token per sequence.

PyTorch has no attention that reads a block table, and gathering each sequence's context into a
padded tensor (the prefill path) copies the whole KV cache every layer of every step. This kernel
walks the block table instead. One program per (sequence, KV head) serves all query heads of that
group (GQA), so each K/V tile is loaded once; online softmax in fp32.

Split-KV (flash-decoding): with few sequences there are few programs (batch 1 of an 8B model: 8, on
a GPU of 132 SMs), and one long context is read by one SM at a time (a 32k-token sequence decoded
at ~30 tokens/s). `splits` > 1 cuts each sequence's context into that many ranges, one program each,
which write a partial (max, sum, output); a second kernel combines them with the log-sum-exp rule.
The number of splits is a launch size, so it is fixed per batch size (as a CUDA graph needs); a
sequence shorter than the splits leaves the surplus programs empty (they write a neutral partial).

Shapes and sizes are static per call, so the kernels can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _attend(
    q,
    K,
    V,
    BT,
    b,
    kvh,
    lo,
    hi,
    scale,
    stride_kt,
    stride_kh,
    stride_btb,
    BLOCK_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax of one KV head's group of queries over context positions [lo, hi): the running
    max, sum and unnormalised output (fp32). An empty range leaves -inf, 0, 0."""
    d = tl.arange(0, D)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        nmask = n < hi
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
    return m, l_sum, acc


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
    _, l_sum, acc = _attend(
        q,
        K,
        V,
        BT,
        b,
        kvh,
        0,
        ctx,
        scale,
        stride_kt,
        stride_kh,
        stride_btb,
        BLOCK_SIZE,
        GROUP_PAD,
        D,
        BLOCK_N,
    )
    out = acc / l_sum[:, None]
    tl.store(
        Out + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
        out.to(Out.dtype.element_ty),
        mask=gmask[:, None],
    )


@triton.jit
def _paged_decode_split_kernel(
    Q,
    K,
    V,
    PartM,
    PartL,
    PartO,
    BT,
    LENS,
    scale,
    stride_qb,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_btb,
    SPLITS: tl.constexpr,
    H: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(LENS + b)
    # this split's range: whole tiles, so every split but the last reads full tiles
    per_split = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, ctx)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    gmask = g < GROUP
    heads = kvh * GROUP + g
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=gmask[:, None], other=0.0)
    m, l_sum, acc = _attend(
        q,
        K,
        V,
        BT,
        b,
        kvh,
        lo,
        hi,
        scale,
        stride_kt,
        stride_kh,
        stride_btb,
        BLOCK_SIZE,
        GROUP_PAD,
        D,
        BLOCK_N,
    )
    # partials laid out (B, H, SPLITS[, D]); an empty split leaves m = -inf, l = 0, acc = 0
    row = (b * H + heads) * SPLITS + split
    tl.store(PartM + row, m, mask=gmask)
    tl.store(PartL + row, l_sum, mask=gmask)
    tl.store(PartO + row[:, None] * D + d[None, :], acc, mask=gmask[:, None])


@triton.jit
def _combine_splits_kernel(
    PartM, PartL, PartO, Out, stride_ob, stride_oh, H: tl.constexpr, SPLITS: tl.constexpr, D: tl.constexpr
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    row = (b * H + h) * SPLITS + sp
    m = tl.load(PartM + row)
    l_sum = tl.load(PartL + row)
    acc = tl.load(PartO + row[:, None] * D + d[None, :])
    m_max = tl.max(m, 0)  # split 0 always holds a token (context >= 1), so m_max is finite
    w = tl.where(m > float("-inf"), tl.exp(m - m_max), 0.0)
    total = tl.sum(w * l_sum, 0)
    out = tl.sum(w[:, None] * acc, 0) / total
    tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty))


def decode_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Splits per sequence so that a decode step has about two programs per SM; 1 once the batch alone
    fills the GPU (the partials' round trip is pure cost then). A power of two, at most 16."""
    if device.type != "cuda":
        return 1
    programs = batch * kv_heads
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if programs >= sms:
        return 1
    return min(16, triton.next_power_of_2(-(-2 * sms // programs)))


_SMS: dict[int, int] = {}


def _sm_count(index: int) -> int:
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def paged_decode_attention(
    q: torch.Tensor,  # (B, H, D): this step's query of each sequence
    k_cache: torch.Tensor,  # (slots, KVH, D)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    context_lens: torch.Tensor,  # (B,) int32: tokens in the cache, this step's included
    block_size: int,
    scale: float,
    splits: int = 1,  # > 1: split-KV (decode_splits() picks it); 1: one program per (sequence, KV head)
) -> torch.Tensor:
    B, H, D = q.shape
    kvh = k_cache.shape[1]
    group = H // kvh
    out = torch.empty_like(q)
    assert k_cache.stride(2) == 1 and q.stride(2) == 1, "head dim must be contiguous"
    if splits > 1:
        return _split(q, k_cache, v_cache, block_tables, context_lens, block_size, scale, splits, out)
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


def _split(q, k_cache, v_cache, block_tables, context_lens, block_size, scale, splits, out) -> torch.Tensor:
    B, H, D = q.shape
    kvh = k_cache.shape[1]
    group = H // kvh
    part_m = torch.empty((B, H, splits), dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    part_o = torch.empty((B, H, splits, D), dtype=torch.float32, device=q.device)
    _paged_decode_split_kernel[(B, kvh, splits)](
        q,
        k_cache,
        v_cache,
        part_m,
        part_l,
        part_o,
        block_tables,
        context_lens,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        block_tables.stride(0),
        SPLITS=splits,
        H=H,
        BLOCK_SIZE=block_size,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        D=D,
        BLOCK_N=max(64, block_size),
    )
    _combine_splits_kernel[(B, H)](
        part_m, part_l, part_o, out, out.stride(0), out.stride(1), H=H, SPLITS=splits, D=D
    )
    return out
