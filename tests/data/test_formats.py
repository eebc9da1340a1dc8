"""SFT / preference row normalization and validation."""

from __future__ import annotations

import pytest

from tuneloop.data.formats import FormatError, to_row

ANSWER = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好，请问有什么可以帮您？"}]


def test_alpaca_with_input_system_and_history_becomes_messages() -> None:
    row = {
        "instruction": "Translate",
        "input": "hello",
        "output": "你好",
        "system": "Be brief.",
        "history": [["hi", "hey"]],
    }
    assert to_row(row, "sft")["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "Translate\n\nhello"},
        {"role": "assistant", "content": "你好"},
    ]


def test_sharegpt_and_openai_messages_normalize_to_the_same_row() -> None:
    sharegpt = {
        "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": ANSWER[1]["content"]}]
    }
    assert to_row(sharegpt, "sft") == to_row({"messages": ANSWER}, "sft") == {"messages": ANSWER}


def test_openai_content_parts_are_joined() -> None:
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        {"role": "assistant", "content": "b"},
    ]
    assert to_row({"messages": msgs}, "sft")["messages"][0] == {"role": "user", "content": "a"}


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"role": "user", "content": "q"}], "no_assistant_answer"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "no_assistant_answer"),
        ([{"role": "assistant", "content": "a"}], "bad_alternation"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ],
            "bad_alternation",
        ),
        ([{"role": "robot", "content": "q"}], "bad_role"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ],
            "misplaced_system",
        ),
        ([], "empty_conversation"),
    ],
)
def test_invalid_conversations_are_rejected_with_a_reason(messages: list, code: str) -> None:
    with pytest.raises(FormatError) as err:
        to_row({"messages": messages}, "sft")
    assert err.value.code == code


def test_tool_turns_may_answer_an_assistant() -> None:
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    assert len(to_row({"messages": msgs}, "sft")["messages"]) == 4


def test_wrong_shapes_are_format_errors() -> None:
    with pytest.raises(FormatError, match="alpaca, ShareGPT"):
        to_row({"question": "q"}, "sft")
    with pytest.raises(FormatError, match="no string field"):
        to_row({"body": "x"}, "pretrain")
    with pytest.raises(FormatError):
        to_row([1, 2], "sft")


def test_preference_rows_become_conversational_prompt_chosen_rejected() -> None:
    row = to_row({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "preference")
    assert row == {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    sharegpt = {
        "conversations": [{"from": "human", "value": "2+2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
    }
    assert to_row(sharegpt, "preference") == row
    with pytest.raises(FormatError, match="identical"):
        to_row({"prompt": "q", "chosen": "a", "rejected": "a"}, "preference")
