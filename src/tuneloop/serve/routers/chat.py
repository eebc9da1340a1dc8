"""POST /v1/chat/completions.

The path of a chat request, in the order it runs (completions take the same one):
1. `middleware.RequestContext`: a request id, the arrival time, the body size limit.
2. `auth.AuthFirst` + `auth.require`: the API key and its scope, before the body is read (`keys`,
   `jwt`); then FastAPI parses the body (`protocol.ChatCompletionRequest`; errors in `errors`).
3. this route: the key may use the model; `Gateway.served` picks the model or the route's variant
   (`routing`); `guard` checks the text; `_common.fan_out` makes one `GenerateRequest` per choice
   (`client`); a `serving.Generation` carries them.
4. `Generation.admitted()` (`async with`): the key's quota (`ratelimit`, with the prompt sized by the
   client's `prepare`), a slot of the model's gate (`limits`), the shadow copy (`routing.Shadows`).
5. the engine: `EngineClient.generate` per choice — `local.LocalClient` (tokenizer, chat template,
   `batch_encoder`, `detokenizer`, the `engine`), `upstream.UpstreamClient`, or `fake.FakeClient`;
   `Generation.stream` merges the choices and times the tokens (`metrics`).
6. the answer, built here: `_response` from `responses.collect`, or `_chunks` sent as events by
   `responses.event_stream`; the client leaving is watched there.
7. `Generation.finish`: metrics, the request-log line (`interactions.requestlog`), the answered-
   response record (`interactions.feedback.RecentResponses`); leaving `admitted()` frees the slot and
   settles the quota.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from tuneloop.models.tool_calls import ToolCallDelta as CallPiece
from tuneloop.models.tool_calls import assemble
from tuneloop.serve.auth import AuthFirst, check_model, require
from tuneloop.serve.client import TokenLogprob
from tuneloop.serve.gateway import Gateway, get_gateway
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
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
    new_id,
)
from tuneloop.serve.responses import ChoiceResult, Event, collect, event_stream, headers
from tuneloop.serve.routers._common import fan_out, generation_responses, include_usage
from tuneloop.serve.serving import Generation
from tuneloop.serve.structured import check_tools

router = APIRouter(tags=["chat"], route_class=AuthFirst)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=generation_responses(ChatCompletion, ChatCompletionChunk),
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    key: ApiKey = Depends(require("inference")),
    gw: Gateway = Depends(get_gateway),
) -> Response:
    check_model(key, body.model)
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in body.tools] if body.tools else None
    tool_choice = (
        body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice
    )
    check_tools(tools, tool_choice)
    served = gw.served(body.model, body.end_user or request.headers.get("x-tuneloop-user"))
    response_id = new_id("chatcmpl")
    messages = [m.template() for m in body.messages]
    gw.guard.check(m["content"] for m in messages)
    top = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens or body.max_tokens
    choices = fan_out(
        gw.config.limits,
        body,
        response_id,
        max_tokens,
        messages=messages,
        logprobs=top,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
    )
    logged = body.model_dump(exclude_none=True, by_alias=True)
    gen = Generation(gw, request, key, served, response_id, choices, logged)
    if body.stream:
        return await event_stream(gen, _chunks(gen, body))
    async with gen.admitted():
        answer = _response(gen, body, await collect(gen))
        await gen.finish(200, answer)
    return JSONResponse(answer, headers=headers(gen))


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
            message=_message(r),
            finish_reason=r.finish_reason,
            logprobs=_logprobs(r.logprobs) if body.logprobs else None,
        )
        for i, r in enumerate(results)
    ]
    return ChatCompletion(
        id=gen.response_id, model=body.model, choices=choices, usage=_usage(gen)
    ).model_dump()


def _message(r: ChoiceResult) -> AssistantMessage:
    """The answer of a choice: its text, and its tool calls assembled from their pieces (as a stream's
    client assembles them, so a stream and a whole answer agree)."""
    calls = [
        ToolCallOut(id=c["id"], function=FunctionCallOut(name=c["name"], arguments=c["arguments"]))
        for c in assemble(r.tool_calls)
    ]
    if calls:
        return AssistantMessage(content=r.text or None, tool_calls=calls)
    return AssistantMessage(content=r.text)


def _call_pieces(pieces: list[CallPiece]) -> list[ToolCallDelta]:
    return [
        ToolCallDelta(
            index=p.index,
            id=p.id,
            type="function" if p.id else None,
            function=FunctionCallDelta(
                name=p.name, arguments=p.arguments if (p.arguments or p.name is not None) else None
            ),
        )
        for p in pieces
    ]


async def _chunks(gen: Generation, body: ChatCompletionRequest) -> AsyncGenerator[dict | Event, None]:
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
            if delta.tool_calls:  # a call's head or a piece of its arguments (models.tool_calls)
                choice = ChatChunkChoice(
                    index=index,
                    delta=ChatDelta(content=delta.text or None, tool_calls=_call_pieces(delta.tool_calls)),
                    finish_reason=delta.finish_reason,
                    logprobs=_logprobs(delta.logprobs) if body.logprobs else None,
                )
                yield chunk([choice])
            elif body.logprobs and (delta.text or delta.finish_reason or delta.logprobs):
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
