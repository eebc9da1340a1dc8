"""Row formats: turn a raw record into the output row of its kind, or say precisely why not.

- pretrain: a document or a row with a text field -> {"text": ...}; a chat row (no text field) is
  skipped with its reason, or rendered as 'Role: content' paragraphs with `input.chat_to_text`
- sft: alpaca (instruction/input/output[/system/history]), ShareGPT (conversations from/value) or
  OpenAI messages -> {"messages": [...]}, validated (roles, alternation, non-empty assistant turn)
- preference: prompt/chosen/rejected (strings or messages), or ShareGPT/alpaca ranking rows ->
  {"prompt": messages, "chosen": [assistant], "rejected": [assistant]} (TRL's conversational form)
"""

from __future__ import annotations

from typing import Any

from tuneloop.data.tool_rows import TOOL_FIELDS, ToolRowError, check_tool_use, check_tools

Message = dict[str, Any]  # role and content (text), and the tool fields of data/tool_rows.py
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
    "bing": "assistant",
    "chatgpt": "assistant",
}


class FormatError(ValueError):
    """A record of the wrong shape; `code` is the counted reason, the message the detail for the manifest."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def to_row(record: Any, kind: str, text_field: str = "text", chat_to_text: bool = False) -> dict[str, Any]:
    if kind == "pretrain":
        try:
            return {"text": _text(record, text_field)}
        except FormatError as e:
            if not (chat_to_text and e.code == "missing_text" and _is_chat(record)):
                raise
            return {"text": chat_as_text(_messages(record))}
    if not isinstance(record, dict):
        raise FormatError(
            "not_a_row", f"a {kind} record must be a JSON object/table row, got a {type(record).__name__}"
        )
    if kind == "sft":
        return _sft(record)
    return _preference(record)


def _sft(record: dict[str, Any]) -> dict[str, Any]:
    """An SFT row; with `tools`, the tools and the messages' tool calls are kept and checked together."""
    messages = validate_messages(_messages(record))
    tools = record.get("tools")
    try:
        names = set(check_tools(tools)) if tools is not None else None
        check_tool_use(messages, names)
    except ToolRowError as e:
        raise FormatError("bad_tool_call", f"{e.field}: {e.problem}") from None
    return {"messages": messages, "tools": tools} if tools is not None else {"messages": messages}


def _text(record: Any, text_field: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise FormatError(
            "not_a_row", f"expected an object with '{text_field}', got a {type(record).__name__}"
        )
    for key in dict.fromkeys((text_field, "text", "content")):
        if isinstance(record.get(key), str):
            return record[key]
    raise FormatError("missing_text", f"row has no string field '{text_field}' (keys: {sorted(record)[:8]})")


def _is_chat(record: Any) -> bool:
    return isinstance(record, dict) and (
        "messages" in record or "conversations" in record or ("instruction" in record and "output" in record)
    )


def chat_as_text(messages: list[Message]) -> str:
    """A conversation as plain text for pretraining: one 'Role: content' paragraph per non-empty turn."""
    turns = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages if m["content"].strip()]
    if not turns:
        raise FormatError("empty_conversation", "conversation has no text")
    return "\n\n".join(turns)


def _messages(row: dict[str, Any]) -> list[Message]:
    if "messages" in row:
        return [_message(m, "role", "content") for m in _list(row["messages"], "messages")]
    if "conversations" in row:
        msgs = [_sharegpt(m) for m in _list(row["conversations"], "conversations")]
        return _with_system(row, msgs)
    if "instruction" in row and "output" in row:
        return _alpaca(row)
    raise FormatError(
        "unknown_shape", f"row is not alpaca, ShareGPT or OpenAI messages (keys: {sorted(row)[:8]})"
    )


def _alpaca(row: dict[str, Any]) -> list[Message]:
    msgs: list[Message] = []
    for pair in row.get("history") or []:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise FormatError("bad_history", "alpaca 'history' must be a list of [question, answer] pairs")
        msgs += [{"role": "user", "content": _str(pair[0])}, {"role": "assistant", "content": _str(pair[1])}]
    prompt = _str(row["instruction"])
    if row.get("input"):
        prompt = f"{prompt}\n\n{_str(row['input'])}" if prompt else _str(row["input"])
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _str(row["output"])}]
    return _with_system(row, msgs)


def _sharegpt(m: Any) -> Message:
    if not isinstance(m, dict) or "from" not in m or "value" not in m:
        raise FormatError("bad_message", "ShareGPT turns need 'from' and 'value'")
    role = SHAREGPT_ROLES.get(str(m["from"]).lower())
    if role is None:
        raise FormatError("bad_role", f"unknown ShareGPT speaker '{m['from']}'")
    return {"role": role, "content": _str(m["value"])}


def _message(m: Any, role_key: str, content_key: str) -> Message:
    if not isinstance(m, dict) or role_key not in m:
        raise FormatError("bad_message", f"each message needs '{role_key}' and '{content_key}'")
    content = m.get(content_key)
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    out: Message = {"role": str(m[role_key]), "content": _str(content)}
    out.update({k: m[k] for k in TOOL_FIELDS if m.get(k) is not None})  # tool use survives preparation
    return out


def _with_system(row: dict[str, Any], msgs: list[Message]) -> list[Message]:
    system = row.get("system")
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": _str(system)}, *msgs]
    return msgs


_FOLLOWS: dict[str | None, set[str]] = {
    None: {"user"},
    "user": {"assistant"},
    "assistant": {"user", "tool"},
    "tool": {"tool", "assistant"},
}


def validate_messages(msgs: list[Message], *, final_assistant: bool = True) -> list[Message]:
    """Roles known, system only first, user/assistant alternate (tool answers an assistant), assistant last."""
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body:
        raise FormatError("empty_conversation", "conversation has no user/assistant messages")
    prev: str | None = None
    for i, m in enumerate(body):
        role = m["role"]
        if role not in ROLES:
            raise FormatError("bad_role", f"message {i}: unknown role '{role}'")
        if role == "system":
            raise FormatError("misplaced_system", f"message {i}: a system message may only come first")
        if role not in _FOLLOWS[prev]:
            raise FormatError(
                "bad_alternation", f"message {i}: '{role}' cannot follow '{prev or 'the start'}'"
            )
        if role == "user" and not m["content"].strip():
            raise FormatError("empty_turn", f"message {i}: empty user turn")
        prev = role
    if final_assistant and (
        prev != "assistant" or not (body[-1]["content"].strip() or body[-1].get("tool_calls"))
    ):
        raise FormatError("no_assistant_answer", "the conversation must end with a non-empty assistant turn")
    return msgs


def _preference(row: dict[str, Any]) -> dict[str, Any]:
    if "chosen" not in row or "rejected" not in row:
        raise FormatError(
            "unknown_shape", f"preference rows need 'chosen' and 'rejected' (keys: {sorted(row)[:8]})"
        )
    if "prompt" in row:
        p = row["prompt"]
        prompt = (
            [{"role": "user", "content": p}]
            if isinstance(p, str)
            else [_message(m, "role", "content") for m in _list(p, "prompt")]
        )
        prompt = _with_system(row, prompt)
    elif "conversations" in row or "messages" in row or "instruction" in row:
        prompt = _messages({**row, "output": ""}) if "instruction" in row else _messages(row)
        prompt = prompt[:-1] if "instruction" in row else prompt
    else:
        raise FormatError(
            "unknown_shape", "preference rows need 'prompt' (or conversations/messages/instruction)"
        )
    body = prompt[1:] if prompt and prompt[0]["role"] == "system" else prompt
    if not body or body[-1]["role"] != "user":
        raise FormatError("bad_prompt", "the prompt must end with a user turn")
    validate_messages(prompt, final_assistant=False)
    chosen, rejected = _answer(row["chosen"]), _answer(row["rejected"])
    if chosen == rejected:
        raise FormatError("same_answers", "'chosen' and 'rejected' are identical")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _answer(value: Any) -> str:
    if isinstance(value, list) and value:  # a list of messages: the (last) assistant turn
        value = value[-1]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
    text = _str(value)
    if not text.strip():
        raise FormatError("empty_answer", "'chosen' and 'rejected' must be non-empty")
    return text


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError("bad_shape", f"'{name}' must be a list, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError("not_text", f"expected text, got {type(value).__name__}")
    return value
