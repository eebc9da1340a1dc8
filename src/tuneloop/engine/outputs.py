"""What the engine hands back: token ids only (the server detokenizes).

`RequestOutput` is one step's news for one request: the tokens it produced in that step, never the
whole list again (a stream of N tokens costs N, not N^2/2, to build, send and read). It is a
msgspec Struct so the engine process sends it as is (process.py). `Generation` puts a request's
outputs back together, for callers that want the whole answer (`LLMEngine.generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec


class RequestOutput(msgspec.Struct, array_like=True, gc=False):
    request_id: str
    new_token_ids: list[int]  # produced this step (one, or none for a finish without a token)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    logprobs: list[dict[int, float] | None] = []  # one per new_token_ids
    prompt_logprobs: list[dict[int, float] | None] | None = None  # first output only
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    error: str | None = None  # finish_reason "error": why the engine failed this request (only it)


@dataclass
class Generation:
    """A request's outputs so far, put together: every token, its logprobs, how it ended."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float] | None] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    error: str | None = None

    def add(self, out: RequestOutput) -> Generation:
        self.token_ids.extend(out.new_token_ids)
        self.logprobs.extend(out.logprobs)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.num_prompt_tokens:  # an abort's output knows none
            self.num_prompt_tokens, self.num_cached_tokens = out.num_prompt_tokens, out.num_cached_tokens
        self.finished, self.finish_reason, self.error = out.finished, out.finish_reason, out.error
        return self


class RequestFailedError(RuntimeError):
    """The engine failed this request (and only it) inside a step; the server answers 500."""
