"""A logged answer with its ratings, as the loop and the gateway's admin API read them.

`interaction(record, ratings)` turns one request-log record (OpenAI format) into the prompt the
person saw and the answer they rated; `answer_text` is the first choice's text. Tool use is kept
whole: the request's `tools`, the prompt messages' `tool_calls` / `tool_call_id` / `name`, and the
answer's `tool_calls` (an answer that only calls tools has no text: `answer` is None).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")  # as data/tool_rows.py keeps them


@dataclass
class Rating:
    id: int
    rating: int  # 1-5 (thumbs up = 5, down = 1)
    key_id: str
    correction: str | None = None
    comment: str | None = None
    user: str | None = None  # the end user who rated (a rater is key id + user)


@dataclass
class Interaction:
    """One logged answer with every rating it got."""

    response_id: str
    request_id: str | None
    key_id: str | None
    model: str | None
    variant: str | None
    model_version: str | None
    time: float
    status: int | None
    prompt: list[dict[str, str]] | None  # chat messages up to the answer (None: not a text prompt)
    answer: str | None
    ratings: list[Rating] = field(default_factory=list)
    workload: str | None = None
    tools: list[dict[str, Any]] | None = None  # the request's function tools
    tool_calls: list[dict[str, Any]] | None = None  # the answer's tool calls (OpenAI shape)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Interaction:
        return cls(**{**d, "ratings": [Rating(**r) for r in d.get("ratings", [])]})


def interaction(record: dict[str, Any], ratings: list[Rating]) -> Interaction:
    request = record.get("request") or {}
    # OpenAI's `metadata` tags, logged with the record (and inside the request as it was received)
    metadata = next((m for m in (record.get("metadata"), request.get("metadata")) if isinstance(m, dict)), {})
    return Interaction(
        response_id=record["response_id"],
        request_id=record.get("request_id"),
        key_id=record.get("key_id"),
        model=record.get("model"),
        variant=record.get("variant"),
        model_version=record.get("model_version"),
        time=float(record.get("time", 0.0)),
        status=record.get("status"),
        prompt=_prompt(request),
        answer=answer_text(record.get("response")),
        ratings=ratings,
        workload=record.get("workload") or metadata.get("workload"),
        tools=request.get("tools") if isinstance(request.get("tools"), list) else None,
        tool_calls=answer_tool_calls(record.get("response")),
    )


def _prompt(request: dict[str, Any]) -> list[dict[str, str]] | None:
    messages = request.get("messages")
    if isinstance(messages, list):
        return [_message(m) for m in messages if isinstance(m, dict)]
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return None  # token ids or several prompts: not something a person rated as text


def _message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": str(m.get("role")), "content": _content(m.get("content"))}
    out.update({k: m[k] for k in TOOL_FIELDS if m.get(k) is not None})
    return out


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def answer_tool_calls(response: Any) -> list[dict[str, Any]] | None:
    """The first choice's tool calls (None: it called none): `message.tool_calls`, or a streamed
    answer's `tool_calls` (the gateway logs a stream's choices with their calls assembled)."""
    if not isinstance(response, dict) or not response.get("choices"):
        return None
    first = response["choices"][0]
    message = first.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else first.get("tool_calls")
    return calls if isinstance(calls, list) and calls else None


def answer_text(response: Any) -> str | None:
    """The first choice's text: chat (`message.content`), completion or streamed (`text`)."""
    if not isinstance(response, dict) or not response.get("choices"):
        return None
    first = response["choices"][0]
    message = first.get("message")
    if isinstance(message, dict):
        return message.get("content")
    return first.get("text")
