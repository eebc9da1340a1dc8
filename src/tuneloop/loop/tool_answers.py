"""Answers that call tools, through curation: one canonical text for the checks, and back to `tool_calls`.

Curation checks answers as text (filters, PII, duplicates). A tool-call answer is checked as its
canonical JSON text, `{"tool_calls": [{"name": ..., "arguments": {...}}], "content": ...}` (keys
sorted, so the same calls are the same text), and turned back into an OpenAI assistant message when
the dataset is written. A rater's correction of such an answer must itself be tool calls, in the
same JSON (or OpenAI's `tool_calls` list, or one `{"name", "arguments"}` object), calling the
request's tools with object arguments; otherwise it is rejected as `correction_not_a_tool_call`
(never trained on as text in place of a call).
"""

from __future__ import annotations

import json
from typing import Any

from tuneloop.data.tool_rows import ToolRowError, arguments_object, check_tool_use, check_tools

CORRECTION_HINT = (
    'correct a tool call with the calls it should have made, as JSON: {"tool_calls": [{"name": '
    '"get_weather", "arguments": {"city": "Paris"}}]}'
)


def calls_text(tool_calls: list[dict[str, Any]], content: str | None = None) -> str:
    """The canonical text of an answer that calls tools (arguments parsed, so spacing does not matter)."""
    calls = []
    for c in tool_calls:
        fn = c.get("function") or {}
        try:
            args: Any = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = fn.get("arguments")  # kept as it came: the row check at the end names the problem
        calls.append({"name": fn.get("name"), "arguments": args})
    out: dict[str, Any] = {"tool_calls": calls}
    if content:
        out["content"] = content
    return json.dumps(out, ensure_ascii=False, sort_keys=True)


def parse_calls(text: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """An assistant message with `tool_calls` from a canonical text or a rater's JSON correction;
    ToolRowError when it is not tool calls to the request's tools."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise ToolRowError("correction", "is not JSON tool calls", CORRECTION_HINT) from None
    content = value.get("content") if isinstance(value, dict) else None
    if isinstance(value, dict) and "tool_calls" in value:
        value = value["tool_calls"]
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) for c in calls):
        raise ToolRowError("correction", "holds no tool call objects", CORRECTION_HINT)
    tool_calls = [_openai_call(c, i) for i, c in enumerate(calls, start=1)]
    message = {"role": "assistant", "content": content or "", "tool_calls": tool_calls}
    names = set(check_tools(tools)) if tools is not None else None
    check_tool_use([message], names, field="correction")
    return message


def _openai_call(call: dict[str, Any], n: int) -> dict[str, Any]:
    fn = call.get("function", call)  # OpenAI's {"function": {...}} or the short {"name", "arguments"}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = arguments_object(args, "correction.arguments")
    if not isinstance(args, dict):
        raise ToolRowError("correction.arguments", "must be a JSON object", CORRECTION_HINT)
    name = fn.get("name")
    if not isinstance(name, str):
        raise ToolRowError("correction.name", "missing: a call names its function", CORRECTION_HINT)
    arguments = json.dumps(args, ensure_ascii=False)
    return {
        "id": call.get("id") or f"call_{n}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def assistant_message(text: str, is_call: bool, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The assistant message a dataset row ends with: text, or the tool calls its canonical text holds."""
    return parse_calls(text, tools) if is_call else {"role": "assistant", "content": text}


def with_tools(row: dict[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {**row, "tools": tools} if tools is not None else row


def check_conversation(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """The row check of data/tool_rows.py on a curated conversation (ToolRowError names the field)."""
    check_tool_use(messages, set(check_tools(tools)) if tools is not None else None)
