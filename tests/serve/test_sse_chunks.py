"""The pre-rendered per-token SSE chunks are the JSON the protocol models give (exclude_none)."""

from __future__ import annotations

import json

import pytest

from tuneloop.serve.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
)
from tuneloop.serve.routers import chat, completions

TEXTS = ["hi", 'a "quoted" \\ back\\slash', "line\nbreak\ttab", "你好 🙂", "\u2028", ""]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("finish_reason", [None, "stop", "length"])
@pytest.mark.parametrize("index", [0, 3])
def test_a_chat_text_chunk_is_the_models_json(text, finish_reason, index):
    if not text and finish_reason is None:
        return  # never sent
    model = "org/model-ü"
    head = chat._head("chatcmpl-1", model, 1700000000)
    event = chat._text_event(head, index, text, finish_reason)
    choice = ChatChunkChoice(index=index, delta=ChatDelta(content=text or None), finish_reason=finish_reason)
    expected = ChatCompletionChunk(id="chatcmpl-1", model=model, created=1700000000, choices=[choice])
    dumped = expected.model_dump(exclude_none=True)
    assert json.loads(event.data) == dumped
    assert event.data == json.dumps(dumped, ensure_ascii=False)  # byte for byte as before
    assert (event.index, event.text) == (index, text)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("finish_reason", [None, "stop"])
def test_a_completion_text_chunk_is_the_models_json(text, finish_reason):
    head = completions._head("cmpl-1", "m", 1700000000)
    event = completions._text_event(head, 1, text, finish_reason)
    choice = CompletionChoice(index=1, text=text, finish_reason=finish_reason)
    dumped = Completion(id="cmpl-1", model="m", created=1700000000, choices=[choice]).model_dump(
        exclude_none=True
    )
    assert event.data == json.dumps(dumped, ensure_ascii=False)
