"""Tool use in dataset rows: what is a valid tool row, what each mistake is called, and that data
preparation keeps tools, tool calls and tool answers intact (JSONL, Parquet, cleaning, PII)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tuneloop.data.document import Doc
from tuneloop.data.formats import FormatError, to_row
from tuneloop.data.output import write_parquet
from tuneloop.data.tool_rows import ToolRowError, arguments_object, check_tool_use, check_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(name="get_weather", arguments='{"city": "Paris"}', id="call_1"):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_row(**changes):
    messages = [
        {"role": "user", "content": "Weather in Paris? Mail me at jane@example.com"},
        {"role": "assistant", "content": None, "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C in Paris."},
    ]
    return {"tools": [WEATHER], "messages": messages, **changes}


def test_a_valid_tool_conversation_passes():
    row = tool_row()
    check_tool_use(row["messages"], set(check_tools(row["tools"])))


BAD = {
    "unknown_function": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="get_time"),
        "messages[1].tool_calls[0].function.name",
        "'get_time' is not a function in the row's tools (get_weather)",
    ),
    "arguments_object_not_string": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments={"city": "Paris"}),
        "messages[1].tool_calls[0].function.arguments",
        "must be a string holding a JSON object, not object",
    ),
    "arguments_not_json": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city: Paris}"),
        "messages[1].tool_calls[0].function.arguments",
        "is not valid JSON",
    ),
    "arguments_json_list": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments='["Paris"]'),
        "messages[1].tool_calls[0].function.arguments",
        "must be a JSON object, not a JSON array",
    ),
    "unanswered_id": (
        lambda r: r["messages"][2].update(tool_call_id="call_9"),
        "messages[2].tool_call_id",
        "'call_9' matches no earlier tool call (calls so far: call_1)",
    ),
    "tool_message_without_id": (
        lambda r: r["messages"][2].pop("tool_call_id"),
        "messages[2].tool_call_id",
        "missing",
    ),
    "calls_without_tools": (
        lambda r: r.pop("tools"),
        "messages[1].tool_calls[0].function.name",
        "no 'tools'",
    ),
    "user_makes_calls": (
        lambda r: r["messages"][0].update(tool_calls=[call()]),
        "messages[0].tool_calls",
        "only assistant messages make tool calls",
    ),
    "tool_without_name": (
        lambda r: r["tools"][0]["function"].pop("name"),
        "tools[0].function.name",
        "missing",
    ),
    "tools_not_a_list": (lambda r: r.update(tools=WEATHER), "tools", "must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_mistake_names_its_field(case):
    change, field, problem = BAD[case]
    row = json.loads(json.dumps(tool_row()))
    change(row)
    with pytest.raises(ToolRowError) as e:
        names = set(check_tools(row["tools"])) if "tools" in row else None
        check_tool_use(row["messages"], names)
    assert e.value.field == field and problem in e.value.problem, str(e.value)
    assert e.value.hint


def test_arguments_object_parses_the_string():
    assert arguments_object('{"city": "Paris", "days": 2}') == {"city": "Paris", "days": 2}


def test_prepare_keeps_tools_calls_and_ids():
    row = to_row(tool_row(), "sft")
    assert row["tools"] == [WEATHER]
    assert row["messages"][1]["tool_calls"] == [call()] and row["messages"][1]["content"] == ""
    assert row["messages"][2]["tool_call_id"] == "call_1"


def test_prepare_accepts_a_conversation_ending_in_a_tool_call():
    row = tool_row()
    row["messages"] = row["messages"][:2]
    assert to_row(row, "sft")["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_prepare_counts_a_bad_tool_row_with_its_field():
    row = tool_row()
    row["messages"][2]["tool_call_id"] = "nope"
    with pytest.raises(FormatError) as e:
        to_row(row, "sft")
    assert e.value.code == "bad_tool_call" and "messages[2].tool_call_id" in str(e.value)


def test_text_steps_leave_names_ids_and_schemas_alone_but_redact_arguments():
    row = to_row(tool_row(), "sft")
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = (
        '{"city": "Paris", "to": "jane@example.com"}'
    )
    doc = Doc(0, 0, "x:1", row)
    doc.map_text(lambda t: t.replace("jane@example.com", "<EMAIL>").upper())
    assert doc.row["tools"] == [WEATHER]
    called = doc.row["messages"][1]["tool_calls"][0]
    assert (
        called["id"] == "call_1"
        and called["type"] == "function"
        and called["function"]["name"] == "get_weather"
    )
    assert json.loads(called["function"]["arguments"]) == {"CITY": "PARIS", "TO": "<EMAIL>"}
    assert doc.row["messages"][2]["tool_call_id"] == "call_1"
    assert "get_weather" not in doc.view() and "call_1" not in doc.view()


def test_parquet_keeps_tool_fields(tmp_path):
    rows = [
        to_row(tool_row(), "sft"),
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pq.read_table(write_parquet(jsonl, "sft")).to_pylist()
    assert json.loads(table[0]["tools"]) == [WEATHER] and table[1]["tools"] is None
    assert table[0]["messages"][1]["tool_calls"] == [call()]
    assert table[0]["messages"][2]["tool_call_id"] == "call_1"


def test_token_counts_include_the_tools_and_calls_as_rendered(tiny_llama):
    from tuneloop.data.chat_tokens import ChatCounter
    from tuneloop.models import chat
    from tuneloop.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    counter = ChatCounter(
        str(tiny_llama), lambda texts: [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    )
    row = to_row(tool_row(), "sft")
    rendered = chat.render_chat(tok, row["messages"], row["tools"], add_generation_prompt=False)
    assert counter.count(row) == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert counter.count(row) > counter.count({"messages": row["messages"]})  # the tools are counted
