"""POST /v1/completions (text in, text out; `echo` + `logprobs` score a prompt's likelihood).

With `echo`, the prompt comes first: in the answer's text, or in the first chunk of a stream.
A request takes the path written down in `routers/chat.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tuneloop.serve.auth import AuthFirst, check_model, require
from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    new_id,
)
from tuneloop.serve.responses import ChoiceResult, Event, collect, event_stream, headers
from tuneloop.serve.routers._common import fan_out, generation_responses, include_usage
from tuneloop.serve.serving import Generation

router = APIRouter(tags=["completions"], route_class=AuthFirst)


@router.post("/v1/completions", response_model=None, responses=generation_responses(Completion, Completion))
async def completions(
    body: CompletionRequest,
    request: Request,
    key: ApiKey = Depends(require("inference")),
    gw: Gateway = Depends(get_gateway),
) -> Response:
    check_model(key, body.model)
    served = gw.served(body.model, body.end_user or request.headers.get("x-tuneloop-user"))
    prompt = body.one_prompt
    if isinstance(prompt, str):
        gw.guard.check([prompt])
    else:  # the same deny patterns on the text the ids stand for (the served model's tokenizer)
        await gw.guard.check_ids(served.client, prompt)
    response_id = new_id("cmpl")
    choices = fan_out(
        gw.config.limits,
        body,
        response_id,
        body.max_tokens,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_ids=None if isinstance(prompt, str) else prompt,
        logprobs=body.logprobs,
        echo=body.echo,
    )
    gen = Generation(
        gw, request, key, served, response_id, choices, body.model_dump(exclude_none=True, by_alias=True)
    )
    if body.stream:
        return await event_stream(gen, _chunks(gen, body))
    async with gen.admitted():
        answer = _response(gen, body, await collect(gen))
        await gen.finish(200, answer)
    return JSONResponse(answer, headers=headers(gen))


def _logprobs(entries: list[TokenLogprob], start: int = 0) -> CompletionLogprobs:
    out, offset = CompletionLogprobs(), start
    for e in entries:
        out.tokens.append(e.token)
        out.token_logprobs.append(e.logprob)
        out.top_logprobs.append(e.top or None)
        out.text_offset.append(offset)
        offset += len(e.token)
    return out


def _choice(i: int, r: ChoiceResult, body: CompletionRequest) -> CompletionChoice:
    text, logprobs = r.text, None
    if body.echo:
        text = (r.echo_text or "") + r.text
    if body.logprobs is not None:
        entries = (r.echo_logprobs or []) + r.logprobs if body.echo else r.logprobs
        logprobs = _logprobs(entries)
    return CompletionChoice(index=i, text=text, finish_reason=r.finish_reason, logprobs=logprobs)


def _usage(gen: Generation) -> Usage:
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
    )


def _response(gen: Generation, body: CompletionRequest, results: list[ChoiceResult]) -> dict:
    choices = [_choice(i, r, body) for i, r in enumerate(results)]
    return Completion(id=gen.response_id, model=body.model, choices=choices, usage=_usage(gen)).model_dump()


async def _chunks(gen: Generation, body: CompletionRequest) -> AsyncGenerator[dict | Event, None]:
    created = int(time.time())  # as OpenAI: one `created` for every chunk of a stream
    head = _head(gen.response_id, body.model, created)
    async with aclosing(gen.stream()) as stream:  # closing stops the engine requests of a client gone early
        async for index, delta in stream:
            echo = delta.echo_text is not None and body.echo  # the prompt, before the first token
            if not (delta.text or delta.finish_reason or echo):
                continue
            if body.logprobs is not None or echo:
                text = (delta.echo_text or "") + delta.text if echo else delta.text
                entries = (delta.echo_logprobs or []) + delta.logprobs if echo else delta.logprobs
                lp = _logprobs(entries) if body.logprobs is not None else None
                choice = CompletionChoice(
                    index=index, text=text, finish_reason=delta.finish_reason, logprobs=lp
                )
                yield Completion(
                    id=gen.response_id, model=body.model, created=created, choices=[choice]
                ).model_dump(exclude_none=True)
            else:  # the per-token path: no model, no dict
                yield _text_event(head, index, delta.text, delta.finish_reason)
    if include_usage(body):
        usage = _usage(gen)
        yield Completion(
            id=gen.response_id, model=body.model, created=created, choices=[], usage=usage
        ).model_dump()


def _head(response_id: str, model: str, created: int) -> str:
    """The JSON of a chunk up to its first choice (as `json.dumps` writes a Completion)."""
    fields = {"id": response_id, "object": "text_completion", "created": created, "model": model}
    return json.dumps({**fields, "choices": []}, ensure_ascii=False)[:-2]  # ends in '"choices": ['


def _text_event(head: str, index: int, text: str, finish_reason: str | None) -> Event:
    """A chunk of one choice without logprobs, equal to the model's `model_dump(exclude_none=True)`."""
    end = "" if finish_reason is None else f', "finish_reason": {json.dumps(finish_reason)}'
    return Event(
        f'{head}{{"index": {index}, "text": {json.dumps(text, ensure_ascii=False)}{end}}}]}}', index, text
    )
