"""What the chat and completion routes share: sampling fields -> `GenerateRequest`s for `n` choices."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tuneloop.serve.client import GenerateRequest
from tuneloop.serve.config import LimitsConfig
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.protocol import _Sampling
from tuneloop.serve.structured import check_response_format

STREAM = "A stream of server-sent events (`stream: true`): `data: <chunk JSON>` lines, then `data: [DONE]`"


def fan_out(
    limits: LimitsConfig, body: _Sampling, response_id: str, max_tokens: int | None, **fields: Any
) -> list[GenerateRequest]:
    """One engine request per choice; with a seed, choice i uses seed + i (distinct, reproducible).

    Without max_tokens a choice may use what the context has left after the prompt (as vLLM), at most
    `limits.max_tokens_default` (when set) or `limits.max_completion_tokens`: the client that knows the
    prompt's length lowers it (`fit_context`). A given max_tokens is kept, and a prompt + max_tokens
    over the context is a 400 there, never a silently shorter answer.
    """
    if body.n > limits.max_n:
        raise APIError(400, f"n must be at most {limits.max_n}", "invalid_value", "n")
    if max_tokens is not None and max_tokens > limits.max_completion_tokens:
        raise APIError(
            400, f"max_tokens must be at most {limits.max_completion_tokens}", "invalid_value", "max_tokens"
        )
    response_format = (
        body.response_format.model_dump(exclude_none=True, by_alias=True) if body.response_format else None
    )
    check_response_format(response_format)
    default = limits.max_tokens_default or limits.max_completion_tokens
    return [
        GenerateRequest(
            request_id=f"{response_id}-{i}",
            max_tokens=max_tokens or default,
            fit_context=max_tokens is None,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=None if body.seed is None else body.seed + i,
            stop=body.stop_list,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.logit_bias,
            response_format=response_format,
            **fields,
        )
        for i in range(body.n)
    ]


def include_usage(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def generation_responses(answer: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """What a generation route answers: `answer` as JSON, or (`stream: true`) events of `chunk`s; its errors."""
    ok = {
        "model": answer,
        "description": f"The {answer.__name__}; with `stream: true`, {chunk.__name__} events",
        "content": {"text/event-stream": {"schema": sse_event(chunk.__name__)}},
    }
    return {
        200: ok,
        **documented(
            404,
            429,
            502,
            503,
            504,
            s404="No served model or route of that name",
            s502="An upstream model server failed or could not be reached",
        ),
    }


def sse_event(chunk: str) -> dict[str, Any]:
    """One server-sent event (the schema of `text/event-stream` before OpenAPI 3.2): its data is a
    chunk, an error that ended the stream (OpenAI's shape), or the closing `[DONE]`."""
    payload = {
        "anyOf": [{"$ref": f"#/components/schemas/{chunk}"}, {"$ref": "#/components/schemas/ErrorResponse"}]
    }
    data = {
        "type": "string",
        "if": {"const": "[DONE]"},
        "else": {"contentMediaType": "application/json", "contentSchema": payload},
    }
    return {"type": "object", "required": ["data"], "properties": {"data": data}, "description": STREAM}
