"""models.tool_calls: each format parsed whole and streamed in pieces, assembled as the openai client does."""

from __future__ import annotations

import json
import random

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tuneloop.models.tool_calls import NamedCallParser, assemble, finish_parse, parse, streaming_parser

HERMES = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris \\"Nord\\" }", "days": [1, {"a": 2}]}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {}}\n</tool_call>\n'
)
LLAMA = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"parameters": {"tz": "CET"}, "name": "get_time"}'
ARRAY = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]'
EXPECTED = {
    "hermes": (
        "Let me check.",
        [("get_weather", {"city": 'Paris "Nord" }', "days": [1, {"a": 2}]}), ("get_time", {})],
    ),
    "llama3_json": (None, [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]),
    "json_array": (None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
}
TEXTS = {"hermes": HERMES, "llama3_json": LLAMA, "json_array": ARRAY}


def stream(text: str, parser, seed: int = 0, largest: int = 4):
    """Feed `text` in random pieces; (content, deltas)."""
    rng, content, deltas, i = random.Random(seed), "", [], 0
    while i < len(text):
        n = rng.randint(1, largest)
        d = parser.feed(text[i : i + n])
        content, deltas, i = content + d.content, deltas + d.tool_calls, i + n
    d = parser.finish()
    return content + d.content, deltas + d.tool_calls


def openai_assembled(content: str, deltas) -> list[tuple[str, dict]]:
    """The deltas as chunks through the openai package's own stream accumulator."""
    state = ChatCompletionStreamState()
    chunks = [{"content": content}] + [{"tool_calls": [d.openai()]} for d in deltas]
    for i, delta in enumerate(chunks):
        last = i == len(chunks) - 1
        state.handle_chunk(
            ChatCompletionChunk.model_validate(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": "tool_calls" if last else None}
                    ],
                }
            )
        )
    message = state.get_final_completion().choices[0].message
    assert all(c.id and c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


@pytest.mark.parametrize("fmt", sorted(TEXTS))
def test_whole_output_parses_into_content_and_calls(fmt):
    parsed = parse(TEXTS[fmt], fmt)
    content, calls = EXPECTED[fmt]
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    assert len({c.id for c in parsed.tool_calls}) == len(calls)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fmt", sorted(TEXTS))
def test_streamed_pieces_assemble_in_the_openai_client_to_the_same_calls(fmt, seed):
    content, deltas = stream(TEXTS[fmt], streaming_parser(fmt), seed)
    assert (content or None) == EXPECTED[fmt][0]
    assert openai_assembled(content, deltas) == EXPECTED[fmt][1]
    # the head of each call comes once, before its arguments, and arguments arrive in fragments
    heads = [d for d in deltas if d.id]
    assert [d.index for d in heads] == list(range(len(EXPECTED[fmt][1])))
    assert [c["arguments"] for c in assemble(deltas)] == [
        c.arguments for c in parse(TEXTS[fmt], fmt).tool_calls
    ]


def test_arguments_are_streamed_as_they_are_generated():
    parser = streaming_parser("hermes")
    first = parser.feed('<tool_call>{"name": "f", "arguments": {"city": "Par')
    assert [(d.id is not None, d.name, d.arguments) for d in first.tool_calls] == [
        (True, "f", '{"city": "Par')
    ]
    assert [(d.id, d.arguments) for d in parser.feed("is").tool_calls] == [(None, "is")]  # no head twice
    out = parser.feed('", "x": 1')
    assert out.tool_calls and out.tool_calls[0].id is None and out.tool_calls[0].arguments == '", "x": 1'


def test_a_call_marker_split_across_tokens_is_never_sent_as_content():
    parser = streaming_parser("hermes")
    sent = "".join(parser.feed(piece).content for piece in ["Hi", " <", "tool", "_c", "all>", '{"name": "f"'])
    assert sent == "Hi"
    assert parser.called


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hermes", "no calls here, only a < sign and <tool"),
        ("hermes", '<tool_call>{"name": "f", "arguments": {"x": 1</tool_call>'),  # arguments cut
        ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),  # no name
        ("llama3_json", '{"answer": 42}'),  # JSON that is not a call
        ("llama3_json", "The answer is 42."),
    ],
)
def test_text_that_is_not_a_complete_call_stays_content(fmt, text):
    parsed = parse(text, fmt)
    assert parsed.content == text and parsed.tool_calls == []


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json"])
def test_plain_text_streams_as_content_whole(fmt):
    text = "Paris is sunny {today}."
    content, deltas = stream(text, streaming_parser(fmt))
    assert content == text and deltas == []


def test_a_call_without_arguments_gets_an_empty_object():
    parsed = parse('<tool_call>{"name": "now"}</tool_call>', "hermes")
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("now", "{}")]
    content, deltas = stream('<tool_call>{"name": "now"}</tool_call>', streaming_parser("hermes"))
    assert openai_assembled(content, deltas) == [("now", {})]


def test_arguments_given_as_a_json_string_are_that_string():
    parsed = parse('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "hermes")
    assert parsed.tool_calls[0].arguments == '{"x": 1}'


def test_named_choice_streams_the_whole_output_as_arguments():
    parser = NamedCallParser("get_weather")
    content, deltas = stream(' {"city": "Paris"}', parser)
    assert content == ""
    assert openai_assembled(content, deltas) == [("get_weather", {"city": "Paris"})]
    assert finish_parse(parser, "").tool_calls[0].arguments == '{"city": "Paris"}'


def test_unknown_parser_name_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown tool parser 'mistral'; choose one of hermes, llama3_json"):
        streaming_parser("mistral")
