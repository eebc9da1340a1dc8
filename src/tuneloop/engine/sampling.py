"""Per-request sampling parameters (OpenAI / vLLM semantics), validated at construction.

The engine checks them again when a request is added (`validate(vocab_size)`): a dataclass can be
changed after construction or arrive pickled from another process, and a value that slipped through
would fail inside a step, where it would cost every request of that step (a seed outside what
torch.Generator takes raised in the sampler; an out-of-range stop id can never match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from tuneloop.engine.guided import GuidedDecoding

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_LOGPROBS = 20  # as OpenAI's top_logprobs


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL style, over prompt + output
    frequency_penalty: float = 0.0  # OpenAI style, over output
    presence_penalty: float = 0.0
    seed: int | None = None  # per-request generator: same seed, same tokens
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs of each sampled token (0 = only the sampled one)
    prompt_logprobs: int | None = None
    # token id -> added to its logit before sampling (OpenAI's logit_bias; -100 bans, 100 forces)
    logit_bias: dict[int, float] | None = None
    guided: GuidedDecoding | None = None  # the output must match this (structured outputs, tool calls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ValueError naming the first bad field; with `vocab_size`, token ids are checked too."""
        checks = [
            (_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (_real(self.temperature) and self.temperature >= 0, "temperature must be a number >= 0"),
            (_real(self.top_p) and 0 < self.top_p <= 1, "top_p must be a number in (0, 1]"),
            (_int(self.top_k) and self.top_k >= 0, "top_k must be an integer >= 0 (0: off)"),
            (_real(self.min_p) and 0 <= self.min_p <= 1, "min_p must be a number in [0, 1]"),
            (
                _real(self.repetition_penalty) and self.repetition_penalty > 0,
                "repetition_penalty must be a number > 0",
            ),
            (
                _real(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
                "frequency_penalty must be a number in [-2, 2]",
            ),
            (
                _real(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
                "presence_penalty must be a number in [-2, 2]",
            ),
            (
                self.seed is None or (_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX),
                "seed must be an integer in [-2**63, 2**64 - 1]",
            ),
            (isinstance(self.ignore_eos, bool), "ignore_eos must be true or false"),
            (
                self.logprobs is None or (_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
                f"logprobs must be an integer in [0, {MAX_LOGPROBS}]",
            ),
            (
                self.prompt_logprobs is None
                or (_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
                f"prompt_logprobs must be an integer in [0, {MAX_LOGPROBS}]",
            ),
            (
                isinstance(self.stop_token_ids, (list, tuple))
                and all(_int(t) and t >= 0 for t in self.stop_token_ids),
                "stop_token_ids must be a list of token ids (integers >= 0)",
            ),
        ]
        checks += [
            (
                self.logit_bias is None
                or (
                    isinstance(self.logit_bias, dict)
                    and all(
                        _int(t) and t >= 0 and _real(b) and -100 <= b <= 100
                        for t, b in self.logit_bias.items()
                    )
                ),
                "logit_bias must map token ids (integers >= 0) to numbers in [-100, 100]",
            ),
            (
                self.guided is None or isinstance(self.guided, GuidedDecoding),
                "guided must be a GuidedDecoding (tuneloop.engine.guided)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                name = message.split(" ", 1)[0]
                raise ValueError(f"{message}, got {_short(getattr(self, name))}")
        if self.guided is not None:
            self.guided.validate()
        if vocab_size is not None:
            bad = [t for t in self.stop_token_ids if t >= vocab_size]
            if bad:
                raise ValueError(
                    f"stop_token_ids must be token ids of this model (0..{vocab_size - 1}), got {_short(bad)}"
                )
            bad = [t for t in self.logit_bias or {} if t >= vocab_size]
            if bad:
                raise ValueError(
                    f"logit_bias keys must be token ids of this model (0..{vocab_size - 1}), got {_short(bad)}"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0

    @property
    def host_bound(self) -> bool:
        """Its steps need host data: penalties read the output so far, (prompt) logprobs are built on
        the host, a grammar's mask follows the token just sampled. Async scheduling runs such steps
        synchronously (async_scheduler.py)."""
        return (
            self.needs_penalties
            or self.logprobs is not None
            or self.prompt_logprobs is not None
            or self.guided is not None
        )


def _int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    """A finite number (NaN compares false to every bound; inf would turn logits into NaN)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
