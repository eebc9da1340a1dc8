"""What the chat and completion routes share: sampling fields -> `GenerateRequest`s for `n` choices."""

from __future__ import annotations

from fastapi import Request

from tuneloop.serve.client import GenerateRequest
from tuneloop.serve.errors import APIError
from tuneloop.serve.protocol import _Sampling


def fan_out(
    request: Request, body: _Sampling, response_id: str, max_tokens: int | None, **fields: object
) -> list[GenerateRequest]:
    """One engine request per choice; with a seed, choice i uses seed + i (distinct, reproducible)."""
    limits = request.app.state.config.limits
    if body.n > limits.max_n:
        raise APIError(400, f"n must be at most {limits.max_n}", "invalid_value", "n")
    if max_tokens is not None and max_tokens > limits.max_completion_tokens:
        raise APIError(
            400, f"max_tokens must be at most {limits.max_completion_tokens}", "invalid_value", "max_tokens"
        )
    return [
        GenerateRequest(
            request_id=f"{response_id}-{i}",
            max_tokens=max_tokens or limits.max_tokens_default,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=None if body.seed is None else body.seed + i,
            stop=body.stop_list,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            **fields,
        )
        for i in range(body.n)
    ]


def include_usage(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
