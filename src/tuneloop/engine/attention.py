"""Attention over the paged KV cache, in plain PyTorch (the same path on CPU and GPU).

The batch is flat: N new tokens of B sequences. Their K/V are written into cache slots, then each
sequence's queries attend over its whole context, gathered from its blocks into a padded
(B, L, KVH, D) view. One SDPA call covers prefill chunks and decodes together.

`EngineConfig.prefill_attention="varlen"` builds `VarlenMetadata` instead: no padding at all.
Each sequence's keys are its whole context (cached + new), flattened as (total_k, KVH, D); on CUDA
in fp16/bf16 one `torch.nn.attention.varlen.varlen_attn` (FlashAttention) call covers the batch,
elsewhere an exact per-sequence SDPA loop stands in (the CPU reference of the same layout).
Causality is aligned to the end: a chunk of c queries over k keys sees the k - c earlier tokens and
itself causally, which is FlashAttention's bottom-right causal mask (`check_varlen_causal` makes sure).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

from tuneloop.models.varlen import VARLEN_PARAMS, causal_varlen_attn


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (N,) cache slot of each new token
    query_index: torch.Tensor  # (B, Tq) flat index of each padded query, 0 where padding
    # (N,) row of each real query in the padded (B * Tq) layout: integer indices built on the host,
    # so gathering the output back to flat order is an index_select (a bool mask would sync per layer)
    valid_rows: torch.Tensor
    context_slots: torch.Tensor  # (B, L) cache slot of each context position, 0 where padding
    mask: torch.Tensor  # (B, 1, Tq, L) bool: query may attend to key


@dataclass
class VarlenMetadata:
    """The batch flat, unpadded: B sequences, N = sum(counts) queries, K = sum(starts + counts) keys."""

    slot_mapping: torch.Tensor  # (N,) cache slot of each new token
    cu_seqlens_q: torch.Tensor  # (B+1,) int32: query offsets
    cu_seqlens_k: torch.Tensor  # (B+1,) int32: key offsets
    # (K,) cache slot of each key, sequence after sequence; None when no row has cached context
    # (a fresh prefill): the keys are then the new k/v themselves, no gather
    key_slots: torch.Tensor | None
    max_q: int
    max_k: int
    bounds_q: tuple[int, ...]  # cu_seqlens_q on the host, for the per-sequence path (no sync)
    bounds_k: tuple[int, ...]
    use_kernel: bool  # FlashAttention varlen (CUDA, fp16/bf16) or the per-sequence SDPA path


@dataclass
class DecodeMetadata:
    """A decode-only step on the GPU: one new token per sequence, attention by the Triton kernel."""

    slot_mapping: torch.Tensor  # (B,) cache slot of each new token
    block_tables: torch.Tensor  # (B, max_blocks) int32
    context_lens: torch.Tensor  # (B,) int32, the new token included
    block_size: int
    splits: int = 1  # KV ranges per sequence (split-KV decode); fixed per batch size, as a graph needs


def build_metadata(
    block_tables: list[list[int]],
    starts: list[int],
    counts: list[int],
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    """`starts[b]`: tokens of sequence b already cached; `counts[b]`: new tokens this step."""
    B, Tq, L = len(counts), max(counts), max(s + c for s, c in zip(starts, counts, strict=True))
    tables = torch.zeros((B, -(-L // block_size)), dtype=torch.long)
    for b, table in enumerate(block_tables):
        n = min(len(table), tables.shape[1])
        tables[b, :n] = torch.tensor(table[:n])
    pos = torch.arange(L)
    context_slots = tables[:, pos // block_size] * block_size + pos % block_size  # (B, L)
    starts_t, counts_t = torch.tensor(starts), torch.tensor(counts)
    t = torch.arange(Tq)
    query_valid = t[None, :] < counts_t[:, None]  # (B, Tq)
    query_pos = starts_t[:, None] + t[None, :]  # absolute position of each query
    offsets = torch.cumsum(counts_t, 0) - counts_t
    query_index = torch.where(query_valid, offsets[:, None] + t[None, :], 0)
    slot_mapping = context_slots.gather(1, query_pos.clamp(max=L - 1))[query_valid]
    valid_rows = query_valid.reshape(-1).nonzero().squeeze(1)  # (N,) in flat order: row-major (b, t)
    mask = pos[None, None, :] <= query_pos[:, :, None]  # causal over the whole context
    mask |= ~query_valid[:, :, None] & (pos[None, None, :] == 0)  # padded rows see one key: no NaN
    return AttentionMetadata(
        slot_mapping.to(device),
        query_index.to(device),
        valid_rows.to(device),
        context_slots.to(device),
        mask[:, None].to(device),
    )


def build_varlen_metadata(
    block_tables: list[list[int]],
    starts: list[int],
    counts: list[int],
    block_size: int,
    device: torch.device,
    use_kernel: bool,
) -> VarlenMetadata:
    """As `build_metadata`, unpadded; vectorized on the host (a mixed step may hold 256 rows)."""
    B = len(counts)
    starts_a, counts_a = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    lens_k = starts_a + counts_a
    width = max(len(t) for t in block_tables)
    tables = np.zeros((B, width), np.int64)
    for b, table in enumerate(block_tables):
        tables[b, : len(table)] = table
    bounds_q = np.concatenate([[0], np.cumsum(counts_a)])
    bounds_k = np.concatenate([[0], np.cumsum(lens_k)])
    seq = np.repeat(np.arange(B), lens_k)  # (K,) sequence of each key
    pos = np.arange(bounds_k[-1]) - np.repeat(bounds_k[:-1], lens_k)  # (K,) its position
    key_slots = tables[seq, pos // block_size] * block_size + pos % block_size
    slot_mapping = key_slots[pos >= starts_a[seq]]  # the new tokens, in flat (query) order
    return VarlenMetadata(
        torch.from_numpy(slot_mapping).to(device),
        torch.from_numpy(bounds_q.astype(np.int32)).to(device),
        torch.from_numpy(bounds_k.astype(np.int32)).to(device),
        None if not starts_a.any() else torch.from_numpy(key_slots).to(device),
        int(counts_a.max()),
        int(lens_k.max()),
        tuple(bounds_q.tolist()),
        tuple(bounds_k.tolist()),
        use_kernel,
    )


def paged_attention(
    q: torch.Tensor,  # (N, H, D)
    k: torch.Tensor,  # (N, KVH, D)
    v: torch.Tensor,  # (N, KVH, D)
    k_cache: torch.Tensor,  # (num_blocks * block_size, KVH, D), a view of the layer's cache
    v_cache: torch.Tensor,
    meta: AttentionMetadata | DecodeMetadata,
    scale: float,
) -> torch.Tensor:
    if isinstance(meta, DecodeMetadata):
        from tuneloop.engine.kernels.paged_decode import paged_decode_attention  # needs triton (GPU extra)

        k_cache.index_copy_(0, meta.slot_mapping, k)
        v_cache.index_copy_(0, meta.slot_mapping, v)
        return paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.block_size, scale, meta.splits
        )
    # index_copy_/index_select, not tensor[idx]: a 2-D advanced index is ~100x slower on the CPU
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    if isinstance(meta, VarlenMetadata):
        if meta.key_slots is not None:  # cached context: every key of every row, (K, KVH, D) from the cache
            k, v = k_cache.index_select(0, meta.key_slots), v_cache.index_select(0, meta.key_slots)
        if meta.use_kernel:
            return flash_varlen(q, k, v, meta, scale)
        return _per_sequence(q, k, v, meta, scale)
    B, L = meta.context_slots.shape
    flat = meta.context_slots.reshape(-1)
    qp = (
        q.index_select(0, meta.query_index.reshape(-1)).view(B, -1, *q.shape[1:]).transpose(1, 2)
    )  # (B, H, Tq, D)
    kp = k_cache.index_select(0, flat).view(B, L, *k.shape[1:]).transpose(1, 2)  # (B, KVH, L, D)
    vp = v_cache.index_select(0, flat).view(B, L, *v.shape[1:]).transpose(1, 2)
    if q.is_cuda and kp.shape[1] != qp.shape[1]:
        # SDPA's fused kernels take a mask or GQA, not both: expand K/V heads rather than fall to math
        group = qp.shape[1] // kp.shape[1]
        kp, vp = kp.repeat_interleave(group, dim=1), vp.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=meta.mask, scale=scale, enable_gqa=True)
    out = out.transpose(1, 2).flatten(0, 1)  # (B, H, Tq, D) -> (B * Tq, H, D)
    return out.index_select(0, meta.valid_rows)  # (N, H, D), in flat order


def varlen_fits(device: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether FlashAttention varlen can run this model: CUDA, half precision, torch >= 2.10."""
    return (
        device.startswith("cuda")
        and VARLEN_PARAMS is not None
        and dtype in (torch.float16, torch.bfloat16)
        and head_dim <= 256
        and head_dim % 8 == 0
    )


def flash_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: VarlenMetadata, scale: float
) -> torch.Tensor:
    """One FlashAttention varlen call: q (N, H, D), k/v (K, KVH, D) -> (N, H, D).

    The version adapter is shared with training (tuneloop.models.varlen, torch-only imports).
    """
    return causal_varlen_attn(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_q, meta.max_k, scale)


def _per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: VarlenMetadata, scale: float
) -> torch.Tensor:
    """Exact reference of `flash_varlen`: SDPA on each sequence's slice, causal aligned to the end."""
    outs = []
    gqa = q.shape[1] != k.shape[1]
    for (qs, qe), (ks, ke) in zip(pairwise(meta.bounds_q), pairwise(meta.bounds_k), strict=True):
        c, n = qe - qs, ke - ks
        qb, kb, vb = (x[a:b].transpose(0, 1)[None] for x, a, b in ((q, qs, qe), (k, ks, ke), (v, ks, ke)))
        if c == n:
            o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=gqa)
        else:  # query t (absolute position n - c + t) sees keys 0 .. n - c + t
            pos = torch.arange(n, device=q.device)
            mask = pos[None, :] <= pos[n - c :, None]
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, enable_gqa=gqa)
        outs.append(o[0].transpose(0, 1))  # (1, H, c, D) -> (c, H, D)
    return torch.cat(outs)


def check_varlen_causal(device: str, dtype: torch.dtype) -> None:
    """FlashAttention's causal mask must be bottom-right aligned for chunks with cached context
    (FlashAttention >= 2.1 is; SDPA's is_causal is top-left). One query over two keys tells them apart."""
    q = torch.randn(1, 1, 64, device=device, dtype=dtype)
    k = torch.zeros(2, 1, 64, device=device, dtype=dtype)
    v = torch.tensor([0.0, 1.0], device=device, dtype=dtype)[:, None, None].expand(2, 1, 64).contiguous()
    cu_q = torch.tensor([0, 1], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 2], dtype=torch.int32, device=device)
    meta = VarlenMetadata(cu_q, cu_q, cu_k, None, 1, 2, (0, 1), (0, 2), True)
    got = float(flash_varlen(q, k, v, meta, 64**-0.5)[0, 0, 0])
    # bottom-right: the query is the last of 2 positions, sees both equal-score keys -> 0.5; top-left: 0.0
    if abs(got - 0.5) > 1e-2:
        raise ValueError(
            f"varlen_attn's causal mask is not aligned to the end on this torch {torch.__version__} "
            f"(probe gave {got}, want 0.5); use prefill_attention='padded'"
        )
