"""models.chat: conversations with tools rendered through the model's template, or the Hermes fallback."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneloop.models.chat import render_chat, renders_tools, template_messages
from tuneloop.models.tool_calls import detect_tool_parser, parse

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "22C"},
]
# a template that renders tools and calls itself, the way Qwen2.5's does (arguments as an object)
NATIVE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2(default_model):
    return AutoTokenizer.from_pretrained(default_model)


def test_default_model_template_does_not_render_tools_so_the_hermes_fallback_does(smollm2):
    assert not renders_tools(smollm2)
    assert detect_tool_parser(smollm2) == "hermes"
    text = render_chat(smollm2, CONVERSATION, TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools")
    assert json.dumps(TOOLS[0]) in text  # the tool, whole, inside <tools>
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    )
    # the two results: one user turn, as Qwen2.5 renders them
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n22C\n</tool_response>"
        in text
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_fallback_call_text_parses_back_to_the_same_call(smollm2):
    """What training renders for an assistant's call is exactly what the hermes parser reads back."""
    messages, _ = template_messages(CONVERSATION[:2], TOOLS, native=False)
    parsed = parse(messages[-1]["content"], "hermes")
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_fallback_appends_tools_to_an_existing_system_prompt(smollm2):
    text = render_chat(
        smollm2, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], TOOLS
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert text.count("<|im_start|>system") == 1


def test_without_tools_the_default_template_renders_as_before(smollm2):
    messages = [{"role": "user", "content": "hi"}]
    assert render_chat(smollm2, messages) == smollm2.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_a_template_that_renders_tools_gets_them_and_calls_with_object_arguments(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = NATIVE
    assert renders_tools(tok)
    assert detect_tool_parser(tok) == "hermes"
    text = render_chat(tok, CONVERSATION, TOOLS)
    assert f"<tools>{json.dumps(TOOLS[0])}</tools>" in text.replace(", ", ", ")
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text
    assert "<|im_start|>tool\nsunny" in text  # role tool reaches the template as it is


def test_llama3_style_template_is_detected(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = (
        "{% for t in tools or [] %}{{ t | tojson }}{% endfor %}"
        'Respond with {"name": function name, "parameters": dictionary}. <|python_tag|>'
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert detect_tool_parser(tok) == "llama3_json"


def test_an_unrecognised_tool_format_is_not_guessed(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = "{% for t in tools or [] %}[AVAILABLE_TOOLS]{{ t | tojson }}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert detect_tool_parser(tok, "mistral") is None


def test_a_call_with_arguments_that_are_not_json_is_named(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    bad = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}
    with pytest.raises(ValueError, match=r"messages\[1\]\.tool_calls\[0\]: arguments of 'f' are not JSON"):
        render_chat(tok, [{"role": "user", "content": "x"}, bad], TOOLS)
