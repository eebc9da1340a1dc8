"""`EngineClient`: the interface the routes depend on (one generation, streamed as text deltas).

It sits at the text level, not the token level, so that a remote OpenAI-compatible upstream is just
another implementation; the local implementation owns the tokenizer, the chat template and the
detokenizer. One `GenerateRequest` is one choice: the routes fan out `n` of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class GenerateRequest:
    request_id: str
    prompt: str | None = None  # completions
    prompt_ids: list[int] | None = None  # completions given as token ids (local engines only)
    messages: list[dict[str, str]] | None = None  # chat (rendered by the model's chat template)
    max_tokens: int = 16
    # max_tokens was not given: the client lowers it to what the model's context has left after the
    # prompt (vLLM's default); a given max_tokens is kept, and too long a prompt for it is a 400
    fit_context: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # top-k alternatives per token; None = no logprobs
    echo: bool = False  # completions: return the prompt (and its logprobs) before the answer
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for the first prompt token (nothing to condition on)
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Delta:
    """New text of one choice; the last one has `finish_reason` set and the final token counts."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    # tokens generated so far where the client knows it (local engines), else 0 until the last delta
    completion_tokens: int = 0
    cached_tokens: int = 0
    echo_text: str | None = None  # first delta of an echo request: the prompt itself
    echo_logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0


@runtime_checkable
class EngineClient(Protocol):
    """What a served model must provide; `start` loads and warms up, `close` drains and frees."""

    async def start(self) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]: ...

    def load(self) -> EngineLoad | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class PromptPreparer(Protocol):
    """A client that can size a request before generating (a local model): `prepare` returns it with
    its prompt as token ids and its max_tokens within the context, which is what a key's token quota
    reserves; the prepared request then goes to `generate`, which does not tokenize it again."""

    async def prepare(self, request: GenerateRequest) -> GenerateRequest: ...
