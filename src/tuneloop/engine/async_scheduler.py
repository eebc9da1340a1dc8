"""Async scheduling: step N+1 is scheduled and launched while step N still runs (on by default on CUDA).

As vLLM's and SGLang's overlap schedulers: the sampled ids stay on the device and feed the next
step's input ids there (the runner reads them: model_runner.py); the host reads them one step late,
from a pinned copy behind a CUDA event. So the engine schedules and launches step N+1 first, then
waits for step N's tokens and appends them, checks stops and builds outputs while N+1 runs: the GPU
never waits for Python.

All of its bookkeeping is here, as vLLM v1's AsyncScheduler: a launched step gives each sequence
that samples an output *placeholder* (`Sequence.num_output_placeholders`), a slot counted in
len(seq), so the scheduler and the KV blocks cover it, but not yet in its token ids. When the
engine reads the step's tokens, each fills its placeholder (`fill_placeholder`). Meanwhile:
- a sequence whose placeholder is surely its last token (max_tokens, max_model_len) sits out: the
  engine finishes it when it reads the token; it no longer counts against max_num_seqs;
- a sequence preempted while its step ran is re-admitted once its token is known;
- only the blocks of known tokens enter the prefix cache (they are hashed by their tokens).
A sequence that stopped at step N (a stop token, unknown when N+1 was scheduled) was computed at
N+1 too: that token is dropped, and its blocks freed as usual.

Which steps overlap (`overlaps`): pure decode steps. A step with prefill work (a prompt chunk, or
a request waiting to be admitted) runs synchronously: it is long and GPU-bound, so there is little
host time to hide, while a step of lag would delay the new requests' first tokens by a whole step
(on an H100, TTFT 2.5x and -30% throughput on 256 requests of 128 + 128 tokens with every step
async). Steps of requests that need host data to sample (penalties, logprobs, prompt logprobs) run
synchronously, and so do decode batches above `async_max_batch`.
"""

from __future__ import annotations

from tuneloop.engine.block_manager import BlockManager
from tuneloop.engine.scheduler import Scheduled, Scheduler, by_priority
from tuneloop.engine.sequence import Sequence, Status


class AsyncScheduler(Scheduler):
    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int | None = None,
        max_overlap_batch: int | None = None,
    ):
        super().__init__(blocks, max_num_seqs, max_num_batched_tokens, max_model_len)
        self.max_overlap_batch = max_overlap_batch  # EngineConfig.async_max_batch
        self.host_bound: set[str] = set()  # live requests whose steps need host data

    def add(self, seq: Sequence) -> None:
        super().add(seq)
        if seq.params.host_bound:
            self.host_bound.add(seq.request_id)

    def finish(self, seq: Sequence, reason: str) -> None:
        super().finish(seq, reason)
        self.host_bound.discard(seq.request_id)

    # ------------------------------------------------------------ which steps overlap

    def overlaps(self) -> bool:
        """The next step may be launched before the tokens of the one in flight are read."""
        if self.host_bound:
            return False
        if self.max_overlap_batch is not None and len(self.running) > self.max_overlap_batch:
            return False  # a large batch's host work outlasts its GPU step (EngineConfig.async_max_batch)
        return not self._has_prefill_work()

    def _has_prefill_work(self) -> bool:
        """The next step would compute a prompt chunk: a running sequence is still in prefill, or the
        head of the queue would be admitted (the rule `schedule` applies), or waits for its token in
        flight before it can be."""
        if any(s.in_prefill or s.num_computed < len(s.prompt_ids) for s in self.running):
            return True  # (a prompt's last token is a one-token step, but its first output is waited for)
        if not self.waiting:
            return False
        head = min(self.waiting, key=by_priority)
        if head.num_output_placeholders:
            return True
        active = self._active()
        return super()._can_admit(head, self.budget - active, active)  # running decodes take a token each

    # ------------------------------------------------------------ placeholders

    def launched(self, batch: list[Scheduled]) -> None:
        """A step launched ahead: computed as far as the scheduler is concerned; a placeholder for each
        sequence that samples (evaluated before num_computed moves)."""
        sampling = [item.seq for item in batch if item.samples]
        self.after_step(batch)
        for seq in sampling:
            seq.num_output_placeholders += 1

    def fill_placeholder(self, seq: Sequence) -> bool:
        """The engine read the token of one of `seq`'s placeholders; False when it is dropped (the
        sequence stopped, or was aborted, at the step before)."""
        seq.num_output_placeholders -= 1
        return not seq.finished

    def token_appended(self, seq: Sequence) -> None:
        """Its block may have filled at the step after (whose after_step could not hash it yet)."""
        if not seq.finished and seq.status == Status.RUNNING:
            self.blocks.cache_blocks(seq, self._cacheable(seq))

    # ------------------------------------------------------------ Scheduler's hooks

    def _sits_out(self, seq: Sequence) -> bool:
        """Its placeholder reaches max_tokens or max_model_len (the engine's length checks): no slot,
        no compute; the engine finishes it when it reads the token."""
        if not seq.num_output_placeholders:
            return False
        if len(seq.output_ids) + seq.num_output_placeholders >= seq.params.max_tokens:
            return True
        return self.max_model_len is not None and len(seq) >= self.max_model_len

    def _active(self) -> int:
        # a sequence that sits out no longer counts against max_num_seqs: admit as the synchronous path would
        return len(self.running) - sum(self._sits_out(s) for s in self.running)

    def _can_admit(self, seq: Sequence, budget: int, active: int) -> bool:
        # preempted while its step ran: re-admitted once the engine knows its token
        return not seq.num_output_placeholders and super()._can_admit(seq, budget, active)

    def _cacheable(self, seq: Sequence) -> int:
        return min(seq.num_computed, seq.num_tokens)
