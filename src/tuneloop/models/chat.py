"""A conversation with tools, rendered as the model's prompt: the one renderer serve and train share.

OpenAI's messages go in (assistant messages may carry `tool_calls`, `role: tool` messages carry
`tool_call_id`) with an optional list of function `tools`. A chat template that renders tools
(Qwen2.5, Llama 3.1+, Hermes) gets them through `apply_chat_template(..., tools=...)`, with each
call's `arguments` as an object, as those templates expect (and as vLLM hands them over).

A template that does not (the default model, SmolLM2, renders `content` only) gets the documented
fallback, the Hermes / Qwen2.5 format, written into the messages before its template runs:

- the tools are listed in the system prompt (appended to the first system message, or a new one)
  inside `<tools></tools>`, one JSON object per line, with the instruction to answer
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
- an assistant message's calls become its text: its content, then one `<tool_call>` block per call;
- consecutive `role: tool` messages become one user message of `<tool_response>` blocks.

Training and serving both render through `render_chat`, so a fine-tune learns exactly the text the
server later shows the model, and `models.tool_calls`' `hermes` parser reads what it produces.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from jinja2 import TemplateError

FALLBACK_FORMAT = "hermes"  # the tool format of a template that does not render tools
_PROBE = "tuneloop_probe_function_7f3a"  # a name no template writes unless it renders the tools

FALLBACK_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes the `tools` it is given (probed once per template,
    cached on the tokenizer)."""
    template = tokenizer.chat_template
    cached = getattr(tokenizer, "_tuneloop_renders_tools", None)
    if cached is not None and cached[0] is template:  # the probe of this very template
        return cached[1]
    found = False
    if template:
        tool = {"type": "function", "function": {"name": _PROBE, "description": "", "parameters": {}}}
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}], tools=[tool], tokenize=False, add_generation_prompt=True
            )
            found = _PROBE in text
        except (TemplateError, TypeError, KeyError, ValueError):  # a template that chokes on tools
            found = False
    with contextlib.suppress(AttributeError):  # a tokenizer that takes no attributes: probed each time
        tokenizer._tuneloop_renders_tools = (template, found)
    return found


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> str:
    """The prompt text of `messages` (and `tools`) through the tokenizer's chat template; templates
    that do not render tools get the Hermes fallback (module docstring). Raises ValueError naming the
    message when a message is malformed (a call without a name, arguments that are not JSON)."""
    if not tokenizer.chat_template:
        raise ValueError("this model has no chat template")
    native = renders_tools(tokenizer)
    rendered, kwargs = template_messages(messages, tools, native)
    return tokenizer.apply_chat_template(
        rendered,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
        **template_kwargs,
    )


def template_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, native: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, apply_chat_template kwargs) for a template that renders tools (`native`) or not."""
    if native:
        out = [_native_message(m, i) for i, m in enumerate(messages)]
        return out, ({"tools": tools} if tools else {})
    return _fallback_messages(messages, tools), {}


def text_of(content: Any) -> str:
    """A message's content as text: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def call_arguments(call: dict[str, Any], where: str) -> tuple[str, Any]:
    """(name, arguments as a JSON value) of an OpenAI tool call; arguments may be JSON text or a value."""
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: a tool call needs a function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as e:
            raise ValueError(f"{where}: arguments of '{name}' are not JSON ({e})") from None
    return name, args


def _native_message(m: dict[str, Any], i: int) -> dict[str, Any]:
    out = dict(m)
    if m.get("content") is None or isinstance(m.get("content"), list):
        out["content"] = text_of(m.get("content"))  # templates concatenate content: None would fail
    if m.get("tool_calls"):
        calls = []
        for j, call in enumerate(m["tool_calls"]):
            name, args = call_arguments(call, f"messages[{i}].tool_calls[{j}]")
            calls.append(
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            )
        out["tool_calls"] = calls
    return out


def _fallback_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role, text = m.get("role"), text_of(m.get("content"))
        if role == "tool":
            block = f"<tool_response>\n{text}\n</tool_response>"
            if out and out[-1].get("_tool"):  # one user turn for consecutive results, as Qwen2.5
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        if role == "assistant" and m.get("tool_calls"):
            blocks = []
            for j, call in enumerate(m["tool_calls"]):
                name, args = call_arguments(call, f"messages[{i}].tool_calls[{j}]")
                payload = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
                blocks.append(f"<tool_call>\n{payload}\n</tool_call>")
            text = "\n".join(([text] if text else []) + blocks)
        out.append({"role": role, "content": text})
    for m in out:
        m.pop("_tool", None)
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        block = FALLBACK_SYSTEM.format(tools=listed)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
