"""Tool use in chat rows: OpenAI function `tools`, assistant `tool_calls` and `role: tool` answers, checked.

A row that trains or scores function calling is an SFT row with the request's `tools` beside its
`messages` (the shape of the OpenAI API and of TRL's tool-calling datasets):

    {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}],
     "messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                  {"role": "assistant", "content": "It is 18 C in Paris."}]}

`check_tools` and `check_tool_use` say exactly which field is wrong (`messages[1].tool_calls[0].function
.arguments`); `keep_message` is what of a message survives into a dataset (nothing a template renders
is dropped). The data, train, eval and loop stages all check tool rows here, so they agree.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")  # message fields kept beside role and content

TOOLS_HINT = (
    'tools are OpenAI function tools: [{"type": "function", "function": {"name": "get_weather", '
    '"description": "...", "parameters": {"type": "object", "properties": {...}}}}]'
)
CALL_HINT = (
    'a tool call is {"id": "call_1", "type": "function", "function": {"name": "<a function in tools>", '
    '"arguments": "<a JSON object as a string>"}}'
)


class ToolRowError(ValueError):
    """A tool field of a row is wrong: `field` is its path in the row (`messages[2].tool_call_id`)."""

    def __init__(self, field: str, problem: str, hint: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.hint = field, problem, hint


def check_tools(tools: Any) -> dict[str, dict[str, Any]]:
    """The row's function tools by name; an error names the tool and field that is wrong."""
    if not isinstance(tools, list):
        raise ToolRowError("tools", f"must be a list of function tools, not {_type(tools)}", TOOLS_HINT)
    by_name: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ToolRowError(where, "must be an object with type 'function'", TOOLS_HINT)
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolRowError(
                f"{where}.function.name", "missing: every tool needs a function name", TOOLS_HINT
            )
        params = fn.get("parameters", {})
        if not isinstance(params, dict):
            raise ToolRowError(
                f"{where}.function.parameters",
                f"must be a JSON schema object, not {_type(params)}",
                TOOLS_HINT,
            )
        if fn["name"] in by_name:
            raise ToolRowError(f"{where}.function.name", f"{fn['name']!r} is defined twice", TOOLS_HINT)
        by_name[fn["name"]] = fn
    return by_name


def check_tool_use(messages: list[dict[str, Any]], names: set[str] | None, field: str = "messages") -> None:
    """Tool calls name a function of the row's tools with a JSON-object `arguments` string, and each
    tool message answers an earlier call by its id. `names` None: the row has no `tools`."""
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"{field}[{i}]"
        if "tool_calls" in m and m["tool_calls"] is not None:
            if m.get("role") != "assistant":
                raise ToolRowError(
                    f"{where}.tool_calls",
                    f"only assistant messages make tool calls, not {m.get('role')!r}",
                    CALL_HINT,
                )
            call_ids |= _check_calls(m["tool_calls"], names, f"{where}.tool_calls")
        if m.get("role") == "tool":
            tid = m.get("tool_call_id")
            if tid is None and not call_ids:
                continue  # a tool turn of a text-format conversation (ShareGPT's observation): no ids
            if not isinstance(tid, str) or not tid:
                raise ToolRowError(
                    f"{where}.tool_call_id",
                    "missing: a tool message answers a call and needs its id",
                    'e.g. {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}',
                )
            if tid not in call_ids:
                known = ", ".join(sorted(call_ids)) or "none"
                raise ToolRowError(
                    f"{where}.tool_call_id",
                    f"{tid!r} matches no earlier tool call (calls so far: {known})",
                    "a tool message must follow the assistant message whose tool_calls hold that id",
                )


def _check_calls(calls: Any, names: set[str] | None, field: str) -> set[str]:
    if not isinstance(calls, list) or not calls:
        raise ToolRowError(field, f"must be a non-empty list of tool calls, not {_type(calls)}", CALL_HINT)
    ids: set[str] = set()
    for j, call in enumerate(calls):
        where = f"{field}[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise ToolRowError(where, "must be an object with type 'function'", CALL_HINT)
        if "id" in call:
            if not isinstance(call["id"], str) or not call["id"]:
                raise ToolRowError(
                    f"{where}.id", f"must be a non-empty string, not {_type(call['id'])}", CALL_HINT
                )
            ids.add(call["id"])
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolRowError(
                f"{where}.function.name", "missing: a call names the function it calls", CALL_HINT
            )
        if names is None:
            raise ToolRowError(
                f"{where}.function.name",
                f"calls {fn['name']!r} but the row has no 'tools'",
                "add the request's tools to the row: " + TOOLS_HINT,
            )
        if fn["name"] not in names:
            raise ToolRowError(
                f"{where}.function.name",
                f"{fn['name']!r} is not a function in the row's tools ({', '.join(sorted(names)) or 'none'})",
                "call one of the row's tools, or add the function to 'tools'",
            )
        arguments_object(fn.get("arguments"), f"{where}.function.arguments")
    return ids


def arguments_object(arguments: Any, field: str = "arguments") -> dict[str, Any]:
    """A call's `arguments` (a string, as in the OpenAI API) parsed: it must hold a JSON object."""
    if not isinstance(arguments, str):
        raise ToolRowError(
            field,
            f"must be a string holding a JSON object, not {_type(arguments)}",
            'write the arguments as OpenAI does: "arguments": "{\\"city\\": \\"Paris\\"}" (json.dumps of the object)',
        )
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as e:
        raise ToolRowError(field, f"is not valid JSON ({e.msg} at column {e.colno})", CALL_HINT) from None
    if not isinstance(value, dict):
        raise ToolRowError(field, f"must be a JSON object, not a JSON {_type(value)}", CALL_HINT)
    return value


def keep_message(m: dict[str, Any]) -> dict[str, Any]:
    """The fields of a message a dataset keeps: role, content (text; "" for an assistant message that
    only calls tools) and the tool fields it has."""
    content = m.get("content")
    out: dict[str, Any] = {"role": m["role"], "content": "" if content is None else content}
    out.update({k: m[k] for k in TOOL_FIELDS if m.get(k) is not None})
    return out


def has_tool_use(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
