"""`EngineClient`: the interface the routes depend on (one generation, streamed as text deltas).

It sits at the text level, not the token level, so that a remote OpenAI-compatible upstream is just
another implementation; the local implementation owns the tokenizer, the chat template and the
detokenizer. One `GenerateRequest` is one choice: the routes fan out `n` of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tuneloop.models.tool_calls import ToolCallDelta

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class GenerateRequest:
    request_id: str
    prompt: str | None = None  # completions
    prompt_ids: list[int] | None = None  # completions given as token ids (local engines only)
    messages: list[dict[str, Any]] | None = None  # chat (rendered by the model's chat template)
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
    # OpenAI's own fields, checked by the gateway (serve.structured) and passed on as they came: an
    # upstream gets them unchanged; a local client renders the tools, guides and parses the output
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string, as OpenAI's) -> bias


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
    tool_calls: list[ToolCallDelta] = field(default_factory=list)  # pieces of `delta.tool_calls`


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0


class EngineClient(Protocol):
    """What a served model must provide; `start` loads and warms up, `close` drains and frees.

    Besides generating, a client says what the gateway may rely on (its capabilities), so the gateway
    never guesses from the object's attributes:
    - `version`: what answers, shown in headers and the request log ("NAME/VERSION" for a registry
      reference, a folder's name); None when the client cannot tell (an upstream, the fake).
    - `max_num_seqs`: the sequences it batches in one step, the default of the model's admission gate;
      0 when not known (the gate then admits 64).
    - `tokenizer`: the model's tokenizer when the gateway holds it (a local model), else None; token-id
      prompts are checked against `input.deny` through it.
    - `active`: requests in flight on it, admitted by the gateway or generating; a client replaced by a
      live reload is closed only once this is 0. The gateway counts a request from its admission to its
      end (`Generation.admitted`).
    - `prepare`: the request as it will run (prompt as token ids, max_tokens within the context), which
      is what a key's token quota reserves; None when the client cannot size it (an upstream: its
      tokenizer is not ours; the gateway then estimates).
    """

    version: str | None
    max_num_seqs: int
    tokenizer: PreTrainedTokenizerBase | None
    active: int

    async def start(self) -> None: ...

    async def prepare(self, request: GenerateRequest) -> GenerateRequest | None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]: ...

    def load(self) -> EngineLoad | None: ...

    async def close(self) -> None: ...
