"""Attention over the paged KV cache, in plain PyTorch (the same path on CPU and GPU).

The batch is flat: N new tokens of B sequences. Their K/V are written into cache slots, then each
sequence's queries attend over its whole context, gathered from its blocks into a padded
(B, L, KVH, D) view. One SDPA call covers prefill chunks and decodes together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
class DecodeMetadata:
    """A decode-only step on the GPU: one new token per sequence, attention by the Triton kernel."""

    slot_mapping: torch.Tensor  # (B,) cache slot of each new token
    block_tables: torch.Tensor  # (B, max_blocks) int32
    context_lens: torch.Tensor  # (B,) int32, the new token included
    block_size: int


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
        slot_mapping.to(device), query_index.to(device), valid_rows.to(device),
        context_slots.to(device), mask[:, None].to(device),
    )  # fmt: skip


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
        from tuneloop.engine.kernels.paged_decode import paged_decode_attention

        k_cache.index_copy_(0, meta.slot_mapping, k)
        v_cache.index_copy_(0, meta.slot_mapping, v)
        return paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.block_size, scale
        )
    # index_copy_/index_select, not tensor[idx]: a 2-D advanced index is ~100x slower on the CPU
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
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
