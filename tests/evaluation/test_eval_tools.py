"""`tuneloop eval` on tool rows: the final assistant turn's tool_calls are the reference, replies are
parsed as the server parses them, and tool-call accuracy lands in the report next to perplexity."""

from __future__ import annotations

import json

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.generate import tool_prompt_and_reference
from tuneloop.evaluation.harness import evaluate
from tuneloop.evaluation.report import to_markdown

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def call_row(city: str) -> dict:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
    }


def no_call_row() -> dict:
    return {
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello!"}],
    }


def test_tool_rows_are_scored_on_calls_and_abstentions(tiny_llama, tmp_path):
    data = tmp_path / "tools.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in [call_row("Paris"), call_row("Rome"), no_call_row()])
    )
    report = evaluate(str(tiny_llama), data, max_new_tokens=8)
    # a random tiny model writes no <tool_call>: no valid call, and it rightly abstains on the chat row
    assert report.metrics["valid_call"] == 0.0 and report.metrics["correct_function"] == 0.0
    assert report.metrics["arguments_match"] == 0.0 and report.metrics["no_call_correct"] == 1.0
    assert "perplexity" in report.metrics and "token_f1" in report.metrics  # the text row's words count too
    assert report.samples[0].reference == 'get_weather({"city": "Paris"})'
    assert "| valid_call | 0.0000 |" in to_markdown(report)


def test_the_prompt_of_a_tool_row_keeps_the_tool_results_before_the_scored_turn():
    call = call_row("Paris")["messages"][1]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        call,
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
        {"role": "assistant", "content": "18 C."},
    ]
    prompt, reference = tool_prompt_and_reference(messages)
    assert prompt == messages[:3] and reference == messages[3]
    with pytest.raises(TuneloopError, match="no final assistant turn"):
        tool_prompt_and_reference([{"role": "assistant", "content": "x"}])
