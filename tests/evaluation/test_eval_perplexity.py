"""Perplexity against a direct HF forward, and assistant-only masking (shared with training)."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.perplexity import IGNORE, perplexity, sft_labels, text_labels
from tuneloop.models.loading import load_model, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "中国的首都呢？"},
    {"role": "assistant", "content": "北京。"},
]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(tiny_llama, "cpu"), load_tokenizer(tiny_llama)


def _labelled(tokenizer, labels):
    return tokenizer.decode([t for t in labels if t != IGNORE])


def test_labels_are_assistant_content_and_end_of_turn_only(tiny):
    _, tok = tiny
    ids, labels = sft_labels(tok, CONVERSATION, 512)
    assert len(ids) == len(labels)
    assert _labelled(tok, labels) == "Paris.<|im_end|>北京。<|im_end|>"
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # the "\n" after the last <|im_end|>


def test_changing_user_and_system_text_changes_no_label(tiny):
    _, tok = tiny
    other = [dict(m) for m in CONVERSATION]
    other[0]["content"] = "You are a long-winded assistant with many opinions."
    other[1]["content"] = "Tell me, which city is the capital of France?"
    _, a = sft_labels(tok, CONVERSATION, 512)
    _, b = sft_labels(tok, other, 512)
    assert [t for t in a if t != IGNORE] == [t for t in b if t != IGNORE]


def test_masking_follows_a_template_without_role_headers(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    # Llama-2-like: no generation prompt, the reply ends with the EOS token and nothing after it.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    _, labels = sft_labels(tok, CONVERSATION, 512)
    assert _labelled(tok, labels) == " Paris.<|im_end|> 北京。<|im_end|>"


def test_truncation_cuts_ids_and_labels_together(tiny):
    _, tok = tiny
    ids, labels = sft_labels(tok, CONVERSATION, 10)
    assert len(ids) == len(labels) == 10


def test_template_that_rewrites_earlier_turns_is_a_clear_error(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    # The last message is rendered differently, so a prefix rendering is not a prefix of the whole.
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(TuneloopError, match="prefix by prefix"):
        sft_labels(tok, CONVERSATION, 512)


def test_no_assistant_turn_is_an_error(tiny):
    _, tok = tiny
    with pytest.raises(TuneloopError, match="no assistant turn"):
        sft_labels(tok, CONVERSATION[:2], 512)


def test_perplexity_equals_exp_of_mean_nll_from_a_direct_forward(tiny):
    model, tok = tiny
    second = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help you today?"},
    ]
    examples = [
        sft_labels(tok, CONVERSATION, 512),
        sft_labels(tok, second, 512),
        text_labels(tok, "The capital.", 512),
    ]
    total, count = 0.0, 0
    for ids, labels in examples:  # one row at a time, no padding: HF's own shifted mean loss
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(t != IGNORE for t in labels[1:])
        total, count = total + float(out.loss) * n, count + n
    result = perplexity(model, examples, batch_size=2)
    assert result.tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)


def test_template_that_refuses_a_conversation_is_a_user_error(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(TuneloopError, match=r"refused this conversation.*System role not supported"):
        sft_labels(tok, CONVERSATION, 512)


def test_last_turn_only_labels_just_the_final_reply(tiny):
    from tuneloop.evaluation.perplexity import sft_token_labels

    _, tok = tiny
    ids, labels = sft_token_labels(tok, CONVERSATION, last_turn_only=True)
    assert _labelled(tok, labels) == "北京。<|im_end|>"
    assert ids == sft_token_labels(tok, CONVERSATION)[0]
