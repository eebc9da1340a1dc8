"""Paged KV cache bookkeeping: fixed-size blocks, reference counts, automatic prefix caching.

No tensors here: a block is an index into the cache tensors the model runner owns. A full block
is identified by a hash chained over every token before it, so two sequences that share a prefix
(a system prompt, earlier turns of a chat) share its blocks. Freed blocks keep their hash and stay
reusable until the space is needed (least recently freed first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tuneloop.engine.sequence import Sequence


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full
    tokens: tuple[int, ...] = field(default_factory=tuple)


def chain_hash(previous: int | None, tokens: tuple[int, ...]) -> int:
    return hash((previous, tokens))


def chain_root(seq: Sequence) -> int | None:
    """Where a sequence's chain starts: a LoRA adapter's K/V differ from the base model's for the
    same tokens, so each adapter has its own chain (as vLLM puts the adapter id in the block hash)."""
    return None if seq.lora is None else hash(("lora", seq.lora))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: deque[int] = deque(range(num_blocks))  # ref_count == 0, oldest freed first
        self.cached: dict[int, int] = {}  # chain hash -> block id
        self.hits = 0  # prompt tokens served from the cache
        self.queries = 0  # prompt tokens looked up

    # ------------------------------------------------------------ sizes

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1 - self.num_free / len(self.blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------ allocate / free

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Block ids that already hold the leading full blocks of `seq` (the chain stops at a miss)."""
        if not self.prefix_caching or seq.params.prompt_logprobs is not None:
            return []  # prompt logprobs need every prompt position computed, not served from the cache
        hits, previous = [], chain_root(seq)
        ids = seq.token_ids
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            tokens = tuple(ids[start : start + self.block_size])
            previous = chain_hash(previous, tokens)
            block_id = self.cached.get(previous)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._prefix_hits(seq)
        reusable_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return self.blocks_for(len(seq)) - len(hits) + reusable_free <= self.num_free

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table, "sequence already has blocks"
        hits = self._prefix_hits(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self.free.remove(block_id)
            block.ref_count += 1
            seq.block_table.append(block_id)
        for _ in range(self.blocks_for(len(seq)) - len(hits)):
            seq.block_table.append(self._take())
        cached = len(hits) * self.block_size
        self.queries += len(seq.prompt_ids)
        self.hits += min(cached, len(seq.prompt_ids))
        # the last token is always computed again: its logits are what the next step samples from
        seq.num_cached_prompt = cached
        seq.num_computed = min(cached, len(seq) - 1)
        seq.num_registered = len(hits)

    def _take(self) -> int:
        if not self.free:
            raise RuntimeError("KV cache is out of blocks (the scheduler should have preempted)")
        block_id = self.free.popleft()
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]  # evict: this space now holds other tokens
        block.hash, block.tokens, block.ref_count = None, (), 1
        return block_id

    def free_sequence(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):  # tail first: the prefix stays cached longest
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free.append(block_id)
        seq.block_table = []
        seq.num_computed = seq.num_registered = 0

    # ------------------------------------------------------------ decode

    def can_append(self, seq: Sequence) -> bool:
        return len(seq.block_table) >= self.blocks_for(len(seq)) or self.num_free >= 1

    def append_slot(self, seq: Sequence) -> None:
        """Make room for the newest token (a new block when the last one is full)."""
        if len(seq.block_table) < self.blocks_for(len(seq)):
            seq.block_table.append(self._take())

    def cache_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Enter the full blocks among the first `num_tokens` tokens of `seq` (computed, and known on the
        host: they are hashed) into the prefix cache, so later requests can reuse them (multi-turn chats)."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        full = num_tokens // bs
        if full <= seq.num_registered and full <= len(seq.block_hashes):
            return  # no block filled since the last call: skip building token_ids (every step, every sequence)
        ids = seq.token_ids
        for i in range(len(seq.block_hashes), full):  # hashes are kept on the sequence: O(new blocks)
            previous = seq.block_hashes[-1] if seq.block_hashes else chain_root(seq)
            seq.block_hashes.append(chain_hash(previous, tuple(ids[i * bs : (i + 1) * bs])))
        for i in range(seq.num_registered, full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash, block.tokens = seq.block_hashes[i], tuple(ids[i * bs : (i + 1) * bs])
                self.cached.setdefault(block.hash, block.id)
        seq.num_registered = max(seq.num_registered, full)

    def reset_stats(self) -> None:
        self.hits = self.queries = 0
