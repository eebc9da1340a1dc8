"""What the engine hands back each step: token ids only (the server detokenizes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]  # produced this step (one, or none for a finish without a token)
    token_ids: list[int]  # all output tokens so far
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    logprobs: list[dict[int, float] | None] = field(default_factory=list)  # for new_token_ids
    prompt_logprobs: list[dict[int, float] | None] | None = None  # first output only
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    error: str | None = None  # finish_reason "error": why the engine failed this request (only it)


class RequestFailedError(RuntimeError):
    """The engine failed this request (and only it) inside a step; the server answers 500."""
