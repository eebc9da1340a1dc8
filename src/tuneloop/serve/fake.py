"""A fake `EngineClient` that answers at once: for gateway tests and for measuring gateway overhead.

It echoes the last user text word by word (capped by max_tokens), honours stop strings, and can
be slowed down (`delay_s` per token) to hold requests open in overload tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from tuneloop.serve.client import Delta, EngineLoad, GenerateRequest


class FakeClient:
    version: str | None = None
    max_num_seqs = 0  # not known: the gate admits its default
    tokenizer = None  # token-id prompts cannot be checked against input.deny (as an upstream's)

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.running = 0
        self.active = 0
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def prepare(self, request: GenerateRequest) -> GenerateRequest:
        """One id per word of the prompt: what its answers count as prompt tokens."""
        return replace(request, prompt_ids=list(range(len(_source(request).split()))))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        source = _source(request)
        words = (source or "").split()[: request.max_tokens] or ["ok"]
        self.running += 1
        try:
            text = ""
            for i, word in enumerate(words):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                piece = word if i == 0 else " " + word
                cut = [(text + piece).find(s) for s in request.stop if s in text + piece]
                if cut:
                    yield Delta(
                        text=(text + piece)[: min(cut)][len(text) :],
                        finish_reason="stop",
                        prompt_tokens=len(source.split()),
                        completion_tokens=i + 1,
                    )
                    return
                text += piece
                last = i == len(words) - 1
                reason = ("length" if len(words) == request.max_tokens else "stop") if last else None
                yield Delta(
                    text=piece,
                    finish_reason=reason,
                    prompt_tokens=len((source or "").split()),
                    completion_tokens=i + 1,
                )
        finally:
            self.running -= 1

    def load(self) -> EngineLoad:
        return EngineLoad(running=self.running)

    async def close(self) -> None:
        self.started = False


def _source(request: GenerateRequest) -> str:
    """The text it echoes: the prompt's text when there is one (ids counted by `prepare` ride along
    with it), else the token ids written out."""
    if request.messages is not None:
        return request.messages[-1]["content"]
    if request.prompt is not None:
        return request.prompt
    return " ".join(map(str, request.prompt_ids or []))
