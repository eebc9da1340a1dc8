"""POST /v1/chat/completions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import AuthFirst, check_model, require
from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    TopLogprob,
    Usage,
    new_id,
)
from tuneloop.serve.responses import ChoiceResult, Event, json_response, sse_response
from tuneloop.serve.routers._common import fan_out, generation_responses, include_usage
from tuneloop.serve.routing import mirror, served_model
from tuneloop.serve.serving import Generation

router = APIRouter(tags=["chat"], route_class=AuthFirst)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=generation_responses(ChatCompletion, ChatCompletionChunk),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, key: ApiKey = Depends(require("inference"))
):
    check_model(key, body.model)
    served = served_model(request, body.model, body.user)
    response_id = new_id("chatcmpl")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    request.app.state.guard.check(m["content"] for m in messages)
    top = (body.top_logprobs or 0) if body.logprobs else None
    choices = fan_out(
        request,
        body,
        response_id,
        body.max_completion_tokens or body.max_tokens,
        messages=messages,
        logprobs=top,
    )
    gen = Generation(request, key, served, response_id, choices, body.model_dump(exclude_none=True))
    gen.on_admit = lambda: mirror(request, body.model, choices)
    limits = request.app.state.config.limits
    if body.stream:
        return await sse_response(gen, lambda g: _chunks(g, body), limits.request_timeout_s)
    return await json_response(gen, lambda results: _response(gen, body, results), limits.request_timeout_s)


def _logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    def b(s: str) -> list[int]:
        return list(s.encode())

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=e.token,
                logprob=e.logprob or 0.0,
                bytes=b(e.token),
                top_logprobs=[TopLogprob(token=t, logprob=v, bytes=b(t)) for t, v in e.top.items()],
            )
            for e in entries
        ]
    )


def _usage(gen: Generation) -> Usage:
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
    )


def _response(gen: Generation, body: ChatCompletionRequest, results: list[ChoiceResult]) -> dict:
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=r.text),
            finish_reason=r.finish_reason,
            logprobs=_logprobs(r.logprobs) if body.logprobs else None,
        )
        for i, r in enumerate(results)
    ]
    return ChatCompletion(
        id=gen.response_id, model=body.model, choices=choices, usage=_usage(gen)
    ).model_dump()


async def _chunks(gen: Generation, body: ChatCompletionRequest) -> AsyncIterator[dict | Event]:
    created = int(time.time())  # as OpenAI: one `created` for every chunk of a stream

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> dict:
        return ChatCompletionChunk(
            id=gen.response_id, model=body.model, created=created, choices=choices, usage=usage
        ).model_dump(exclude_none=True)

    head = _head(gen.response_id, body.model, created)
    stream = gen.stream()
    try:
        first = await anext(stream, None)  # a bad request (prompt too long) fails before any byte is sent
        for i in range(len(gen.choices)):  # OpenAI opens every choice with the role
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        item = first
        while item is not None:
            index, delta = item
            if body.logprobs and (delta.text or delta.finish_reason or delta.logprobs):
                content = delta.text if delta.text else None
                choice = ChatChunkChoice(
                    index=index,
                    delta=ChatDelta(content=content),
                    finish_reason=delta.finish_reason,
                    logprobs=_logprobs(delta.logprobs),
                )
                yield chunk([choice])
            elif delta.text or delta.finish_reason:  # the per-token path: no model, no dict
                yield _text_event(head, index, delta.text, delta.finish_reason)
            item = await anext(stream, None)
    finally:
        await stream.aclose()  # stops the engine requests when the client leaves early
    if include_usage(body):
        yield chunk([], _usage(gen))


def _head(response_id: str, model: str, created: int) -> str:
    """The JSON of a chunk up to its first choice (as `json.dumps` writes a ChatCompletionChunk)."""
    fields = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model}
    return json.dumps({**fields, "choices": []}, ensure_ascii=False)[:-2]  # ends in '"choices": ['


def _text_event(head: str, index: int, text: str, finish_reason: str | None) -> Event:
    """A chunk of one choice without logprobs, equal to the model's `model_dump(exclude_none=True)`."""
    delta = f'{{"content": {json.dumps(text, ensure_ascii=False)}}}' if text else "{}"
    end = "" if finish_reason is None else f', "finish_reason": {json.dumps(finish_reason)}'
    return Event(f'{head}{{"index": {index}, "delta": {delta}{end}}}]}}', index, text)
