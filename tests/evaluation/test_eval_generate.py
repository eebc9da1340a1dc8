"""Batched greedy generation: deterministic and token-identical to a plain `model.generate`."""

from __future__ import annotations

import pytest
import torch

from tuneloop.evaluation.generate import generate_replies, prompt_and_reference
from tuneloop.models.loading import chat_inputs, load_model, load_tokenizer

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}],
    [{"role": "user", "content": "Numbers: 1 2 3, and then what comes next in the long list?"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(tiny_llama, "cpu"), load_tokenizer(tiny_llama)


def _plain_generate(model, tok, messages, max_new_tokens):
    inputs = chat_inputs(tok, messages, "cpu")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_single_prompt_equals_plain_generate(tiny):
    model, tok = tiny
    assert generate_replies(model, tok, PROMPTS[:1], max_new_tokens=12) == [
        _plain_generate(model, tok, PROMPTS[0], 12)
    ]


def test_left_padded_batch_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    batched = generate_replies(model, tok, PROMPTS, max_new_tokens=12, batch_size=3)
    assert batched == [_plain_generate(model, tok, p, 12) for p in PROMPTS]


def test_generation_is_deterministic_and_leaves_padding_side_alone(tiny):
    model, tok = tiny
    tok.padding_side = "right"
    first = generate_replies(model, tok, PROMPTS, max_new_tokens=8, batch_size=2)
    assert generate_replies(model, tok, PROMPTS, max_new_tokens=8, batch_size=2) == first
    assert tok.padding_side == "right"
    assert all(isinstance(r, str) and r for r in first)


def test_prompt_is_the_conversation_up_to_the_last_user_turn():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    prompt, reference = prompt_and_reference(messages)
    assert prompt == messages[:3]
    assert reference == "Paris"
