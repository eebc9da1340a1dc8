"""Tools and structured outputs of a request: checked at the door, turned into guided decoding.

The gateway checks what every served model must be given (local or upstream): each tool's
`parameters` and a `json_schema` response format against the JSON Schema metaschema (a 400 naming the
tool and the path inside the schema), tool names unique, a named `tool_choice` one of the tools.

For a local model it then decides, as vLLM does, how the output is constrained and read:

- `tool_choice: "required"`: a JSON array of `{"name": <one tool's name>, "parameters": <its schema>}`
  objects, at least one (at most one with `parallel_tool_calls: false`), read by the `json_array` parser;
- a named function: that function's `parameters` schema; the whole output is its arguments;
- `auto` (the default with tools): unconstrained; the model's own format is parsed
  (`models.tool_calls`, per model: serve.yaml's `tool_parser` or detected from the template);
- `none`: no tools rendered, nothing parsed;
- `response_format` `json_object` / `json_schema`: the output is constrained to it (when no tool choice
  constrains it already).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from tuneloop.engine.guided import GuidedDecoding
from tuneloop.serve.errors import APIError


@dataclass(frozen=True)
class ToolMode:
    """How a choice's output is read: `parser` is a `models.tool_calls` format ("auto": the model's),
    or `named` the function whose arguments the whole output is; None for plain text."""

    parser: str | None = None
    named: str | None = None


def check_schema(schema: Any, where: str, what: str) -> None:
    """A 400 naming `where` (the request field) and the path inside the schema when `schema` is not a
    valid JSON Schema (its `$schema` dialect's metaschema, else 2020-12)."""
    if not isinstance(schema, dict):
        raise APIError(400, f"{where}: {what} must be a JSON Schema object", "invalid_schema", where)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        inside = "/".join(str(p) for p in e.path)
        at = f" at '{inside}'" if inside else ""
        raise APIError(
            400, f"{where}: {what} is not a valid JSON Schema{at}: {e.message}", "invalid_schema", where
        ) from None


def check_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> None:
    """The tools' schemas and names, and a tool_choice that names one of them (400s naming the field)."""
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        fn = tool["function"]
        if fn["name"] in names:
            raise APIError(
                400, f"tools[{i}]: a second function named '{fn['name']}'", "invalid_value", f"tools[{i}]"
            )
        names.append(fn["name"])
        if fn.get("parameters") is not None:
            where = f"tools[{i}].function.parameters"
            check_schema(fn["parameters"], where, f"the parameters of tool '{fn['name']}'")
    if tool_choice is None or tool_choice in ("none", "auto"):
        return
    if not tools:
        raise APIError(400, "tool_choice needs tools", "invalid_value", "tool_choice")
    if isinstance(tool_choice, dict) and tool_choice["function"]["name"] not in names:
        name = tool_choice["function"]["name"]
        raise APIError(
            400,
            f"tool_choice names function '{name}', which is not in tools ({', '.join(names)})",
            "invalid_value",
            "tool_choice.function.name",
        )


def check_response_format(response_format: dict[str, Any] | None) -> None:
    if response_format and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema")
        if schema is not None:
            where = "response_format.json_schema.schema"
            check_schema(schema, where, f"schema '{response_format['json_schema']['name']}'")


def tool_mode(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> ToolMode:
    if not tools or tool_choice == "none":
        return ToolMode()
    if tool_choice == "required":
        return ToolMode(parser="json_array")
    if isinstance(tool_choice, dict):
        return ToolMode(named=tool_choice["function"]["name"])
    return ToolMode(parser="auto")


def _parameters(fn: dict[str, Any]) -> dict[str, Any]:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def guided_decoding(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
    response_format: dict[str, Any] | None,
) -> GuidedDecoding | None:
    """What the output must match, or None (unconstrained)."""
    mode = tool_mode(tools, tool_choice)
    if mode.named is not None:
        i, fn = next(
            (i, t["function"]) for i, t in enumerate(tools or []) if t["function"]["name"] == mode.named
        )
        return GuidedDecoding(json_schema=json.dumps(_parameters(fn)), name=f"tools[{i}].function.parameters")
    if mode.parser == "json_array":
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t["function"]["name"]]},
                    "parameters": _parameters(t["function"]),
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for t in tools or []
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if parallel_tool_calls is False:
            schema["maxItems"] = 1
        return GuidedDecoding(json_schema=json.dumps(schema), name="tools")
    if response_format and response_format["type"] == "json_object":
        return GuidedDecoding(json_object=True, name="response_format")
    if response_format and response_format["type"] == "json_schema":
        js = response_format["json_schema"]
        schema = js.get("schema") or {"type": "object"}
        return GuidedDecoding(json_schema=json.dumps(schema), name="response_format.json_schema.schema")
    return None
