"""POST /v1/completions (text in, text out; `echo` + `logprobs` score a prompt's likelihood)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import check_model, require
from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.errors import APIError
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    new_id,
)
from tuneloop.serve.responses import ChoiceResult, Event, json_response, sse_response
from tuneloop.serve.routers._common import fan_out, include_usage
from tuneloop.serve.routing import mirror, served_model
from tuneloop.serve.serving import Generation

router = APIRouter(tags=["completions"])


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(require("inference"))):
    check_model(key, body.model)
    served = served_model(request, body.model, body.user)
    prompt = _one_prompt(body)
    if body.echo and body.stream:
        raise APIError(400, "echo is not supported with stream", "invalid_value", "echo")
    if isinstance(prompt, str):
        request.app.state.guard.check([prompt])
    else:  # the same deny patterns on the text the ids stand for (the served model's tokenizer)
        await request.app.state.guard.check_ids(served.client, prompt)
    response_id = new_id("cmpl")
    choices = fan_out(
        request,
        body,
        response_id,
        body.max_tokens,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_ids=None if isinstance(prompt, str) else prompt,
        logprobs=body.logprobs,
        echo=body.echo,
    )
    gen = Generation(request, key, served, response_id, choices, body.model_dump(exclude_none=True))
    gen.on_admit = lambda: mirror(request, body.model, choices)
    limits = request.app.state.config.limits
    if body.stream:
        return await sse_response(gen, lambda g: _chunks(g, body), limits.request_timeout_s)
    return await json_response(gen, lambda results: _response(gen, body, results), limits.request_timeout_s)


def _one_prompt(body: CompletionRequest) -> str | list[int]:
    """The single prompt of a request: text or token ids (a batch of prompts is refused: send one each)."""
    p = body.prompt
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p)):
        return p
    raise APIError(
        400, "send one prompt per request: a string or a list of token ids", "invalid_value", "prompt"
    )


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


async def _chunks(gen: Generation, body: CompletionRequest) -> AsyncIterator[dict | Event]:
    created = int(time.time())  # as OpenAI: one `created` for every chunk of a stream
    head = _head(gen.response_id, body.model, created)
    async with aclosing(gen.stream()) as stream:  # closing stops the engine requests of a client gone early
        async for index, delta in stream:
            if not (delta.text or delta.finish_reason):
                continue
            if body.logprobs is not None:
                lp = _logprobs(delta.logprobs)
                choice = CompletionChoice(
                    index=index, text=delta.text, finish_reason=delta.finish_reason, logprobs=lp
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
