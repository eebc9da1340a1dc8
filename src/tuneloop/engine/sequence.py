"""A request inside the engine: its tokens, its KV blocks and how far its prefill has got."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from tuneloop.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from tuneloop.engine.grammar import Guide

_ids = itertools.count()


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"seq-{next(_ids)}")
    priority: int = 0  # lower runs first (vLLM convention)
    lora: str | None = None  # adapter name, None = base model
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chain hashes of the full blocks so far
    num_registered: int = 0  # leading blocks of block_table already entered in the prefix cache
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt: int = 0  # prompt tokens found in the prefix cache at the last allocation
    # async scheduling (async_scheduler.py): output slots of tokens already sampled on the device,
    # whose values the host reads one step late (0 or 1 when a step is scheduled, 2 for a moment)
    num_output_placeholders: int = 0
    finish_reason: str | None = None
    preemptions: int = 0
    logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: list[dict[int, float] | None] = field(default_factory=list)
    first_token_time: float | None = None
    # guided decoding: where its output is in the grammar, advanced as the engine appends each token
    # (never by a step that is computed but not committed, nor by a recompute after preemption)
    guide: Guide | None = None

    @property
    def token_ids(self) -> list[int]:
        """The tokens the host knows (placeholders are not in it yet)."""
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        """Tokens the host knows: len(token_ids)."""
        return len(self.prompt_ids) + len(self.output_ids)

    def __len__(self) -> int:
        """Tokens the sequence has, placeholders included: what the scheduler and KV blocks must cover."""
        return len(self.prompt_ids) + len(self.output_ids) + self.num_output_placeholders

    @property
    def num_uncomputed(self) -> int:
        return len(self) - self.num_computed

    @property
    def in_prefill(self) -> bool:
        """More than the newest token is missing from the cache (a prompt, or a recompute after preemption)."""
        return self.num_uncomputed > 1 or self.num_computed == 0

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED
