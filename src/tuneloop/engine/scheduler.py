"""Who runs this step, and how many tokens each: continuous batching with chunked prefill.

Every step has a token budget. Running sequences go first (a decode costs one token, so a long
prompt being prefilled can never stall them); a prompt larger than what is left is cut into
chunks across steps. Waiting sequences are admitted by (priority, arrival) while the budget, the
sequence limit and free KV blocks allow. When a decode needs a block and none is free, the
lowest-priority, latest-arrived running sequence is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed later. Never touches tensors.

With async scheduling (engine.py) a step is scheduled while the one before still runs: a sequence
sampled there has one pending token, counted in len(seq) but not yet known on the host. It decodes
that token now (the model runner reads its id on the device), unless the token is surely its last
(max_tokens, max_model_len): then it sits out until the engine reads the token and finishes it.
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
    # async scheduling: row of the previous step's sampled-token tensor (on the device) that holds
    # this sequence's newest token, which the host does not know yet; -1 when it does
    token_from: int = -1

    @property
    def samples(self) -> bool:
        """The step reaches the end of the sequence, so its last logits give the next token."""
        return self.seq.num_computed + self.num_tokens == len(self.seq)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int | None = None):  # fmt: skip
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

    def has_prefill_work(self) -> bool:
        """The next step would compute a prompt chunk: a running sequence is still in prefill, or the
        first waiting one would be admitted (or waits for a token in flight before it can be)."""
        if any(s.status == Status.RUNNING and (s.in_prefill or s.num_computed < len(s.prompt_ids))
               for s in self.running):  # fmt: skip
            return True  # (a prompt's last token is a one-token step, but its first output is waited for)
        if not self.waiting:
            return False
        head = min(self.waiting, key=lambda s: (s.priority, s.arrival))
        if head.num_pending:
            return True
        ending = sum(s.status == Status.RUNNING and s.num_pending > 0 and self._last_token_pending(s)
                     for s in self.running)  # fmt: skip
        active = len(self.running) - ending  # as schedule() counts them
        return active < self.max_num_seqs and active < self.budget and self.blocks.can_allocate(head)

    def schedule(self) -> list[Scheduled]:
        budget = self.budget
        batch: list[Scheduled] = []
        ending: list[Sequence] = []
        for seq in sorted(self.running, key=lambda s: (s.priority, s.arrival)):
            if seq.status != Status.RUNNING:
                continue
            if seq.num_pending and self._last_token_pending(seq):
                ending.append(seq)  # no slot, no compute: the engine finishes it when it reads the token
                continue
            if budget == 0:
                continue
            if not seq.in_prefill and not self._make_room(seq):
                continue  # seq itself was preempted
            n = min(seq.num_uncomputed, budget)
            batch.append(Scheduled(seq, n))
            budget -= n
        # an ending sequence no longer counts against max_num_seqs: admit as the synchronous path would
        active = len(self.running) - sum(s.status == Status.RUNNING for s in ending)
        self._admit(batch, budget, active)
        return batch

    def _last_token_pending(self, seq: Sequence) -> bool:
        """The pending token reaches max_tokens or max_model_len (the engine's length checks)."""
        if len(seq.output_ids) + seq.num_pending >= seq.params.max_tokens:
            return True
        return self.max_model_len is not None and len(seq) >= self.max_model_len

    def _admit(self, batch: list[Scheduled], budget: int, active: int) -> None:
        queue = sorted(self.waiting, key=lambda s: (s.priority, s.arrival))
        for seq in queue:
            if seq.num_pending:
                break  # preempted while its step ran: re-admitted once the engine knows its token
            if budget == 0 or active >= self.max_num_seqs or not self.blocks.can_allocate(seq):
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
            victim = max(
                (s for s in self.running if s.status == Status.RUNNING),
                key=lambda s: (s.priority, s.arrival),
            )
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

    def after_step(self, batch: list[Scheduled]) -> None:
        for item in batch:
            item.seq.num_computed += item.num_tokens
            self.blocks.on_computed(item.seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.free_sequence(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
