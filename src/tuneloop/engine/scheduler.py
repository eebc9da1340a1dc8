"""Who runs this step, and how many tokens each: continuous batching with chunked prefill.

Every step has a token budget. Running sequences go first (a decode costs one token, so a long
prompt being prefilled can never stall them); a prompt larger than what is left is cut into
chunks across steps. Waiting sequences are admitted by (priority, arrival) while the budget, the
sequence limit and free KV blocks allow. When a decode needs a block and none is free, the
lowest-priority, latest-arrived running sequence is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed later. Never touches tensors.

Async scheduling (async_scheduler.py) subclasses this: its hooks are `_sits_out`, `_can_admit` and
`_cacheable`; with none of them overridden the scheduler is the synchronous one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tuneloop.engine.block_manager import BlockManager
from tuneloop.engine.sequence import Sequence, Status


@dataclass
class Scheduled:
    seq: Sequence
    num_tokens: int  # tokens to compute this step, starting at seq.num_computed

    @property
    def samples(self) -> bool:
        """The step reaches the end of the sequence, so its last logits give the next token."""
        return self.seq.num_computed + self.num_tokens == len(self.seq)


def by_priority(seq: Sequence) -> tuple[int, float]:
    return seq.priority, seq.arrival


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int | None = None,
    ):
        self.blocks = blocks
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        if self.blocks.blocks_for(len(seq) + seq.params.max_tokens) > len(self.blocks.blocks):
            raise ValueError(
                f"request needs up to {len(seq) + seq.params.max_tokens} tokens of KV cache but the whole cache "
                f"holds {len(self.blocks.blocks) * self.blocks.block_size}"
            )
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Scheduled]:
        budget = self.budget
        batch: list[Scheduled] = []
        for seq in sorted(self.running, key=by_priority):
            if seq.status != Status.RUNNING or self._sits_out(seq):
                continue
            if budget == 0:
                continue
            if not seq.in_prefill and not self._make_room(seq):
                continue  # seq itself was preempted
            n = min(seq.num_uncomputed, budget)
            batch.append(Scheduled(seq, n))
            budget -= n
        self._admit(batch, budget, self._active())
        return batch

    # ------------------------------------------------------------ hooks (async_scheduler.py)

    def _sits_out(self, seq: Sequence) -> bool:
        """A running sequence that takes no slot and no compute this step."""
        return False

    def _active(self) -> int:
        """Running sequences that count against max_num_seqs."""
        return len(self.running)

    def _can_admit(self, seq: Sequence, budget: int, active: int) -> bool:
        """`seq`, the head of the queue, starts now (with `budget` tokens left and `active` running)."""
        return budget > 0 and active < self.max_num_seqs and self.blocks.can_allocate(seq)

    def _cacheable(self, seq: Sequence) -> int:
        """Tokens of `seq` whose K/V can enter the prefix cache: computed, and known on the host."""
        return seq.num_computed

    # ------------------------------------------------------------ admission, preemption

    def _admit(self, batch: list[Scheduled], budget: int, active: int) -> None:
        for seq in sorted(self.waiting, key=by_priority):
            if not self._can_admit(seq, budget, active):
                break  # strict order: a later request never jumps a blocked earlier one
            self.waiting.remove(seq)
            self.blocks.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            active += 1
            n = min(seq.num_uncomputed, budget)
            batch.append(Scheduled(seq, n))
            budget -= n

    def _make_room(self, seq: Sequence) -> bool:
        """A block for seq's next token, preempting others (or seq itself) if the cache is full."""
        while not self.blocks.can_append(seq):
            victim = max((s for s in self.running if s.status == Status.RUNNING), key=by_priority)
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.append_slot(seq)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    # ------------------------------------------------------------ after a step

    def after_step(self, batch: list[Scheduled]) -> None:
        for item in batch:
            item.seq.num_computed += item.num_tokens
            self.blocks.cache_blocks(item.seq, self._cacheable(item.seq))

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.free_sequence(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
