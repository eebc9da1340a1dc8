"""Prompt tokenization off the event loop: the same ids as `tokenizer.encode`, a burst in one batch."""

from __future__ import annotations

import asyncio

import pytest

from tuneloop.models.loading import load_tokenizer
from tuneloop.serve.batch_encoder import BatchEncoder

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n", "北京是中国的首都。", "emoji 🙂 and é", "", "a" * 3000,
         "<|im_start|>user\nHi<|im_end|>"]  # fmt: skip


@pytest.fixture
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


def test_ids_equal_tokenizer_encode_with_and_without_special_tokens(tok):
    from tokenizers import processors

    bos = tok.convert_tokens_to_ids("<|im_start|>")  # as Llama's tokenizer: a BOS with special tokens on
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    enc = BatchEncoder(tok)

    async def main():
        return await asyncio.gather(*(enc.encode(t, flag) for t in TEXTS for flag in (False, True)))

    got = asyncio.run(main())
    expected = [tok.encode(t, add_special_tokens=flag) for t in TEXTS for flag in (False, True)]
    assert got == expected
    assert any(a != b for a, b in zip(expected[0::2], expected[1::2], strict=True))  # the flag matters here
    enc.close()


class Counting:
    """The Rust tokenizer, counting its encode_batch calls."""

    def __init__(self, backend, fail: bool = False):
        self.backend, self.fail, self.calls = backend, fail, []

    def encode_batch(self, texts, add_special_tokens):
        self.calls.append(len(texts))
        if self.fail:
            raise RuntimeError("tokenizer broke")
        return self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)


def test_a_burst_in_one_turn_is_batched_and_a_cancelled_request_does_not_hurt_the_others(tok):
    enc = BatchEncoder(tok, max_batch=16)
    enc.backend = counting = Counting(enc.backend)

    async def main():
        tasks = [asyncio.ensure_future(enc.encode(f"request {i}", False)) for i in range(50)]
        await asyncio.sleep(0)  # every task has queued its prompt: one turn
        tasks[3].cancel()  # its client went away while it waited
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(main())
    assert counting.calls == [16, 16, 16, 2]  # in order, at most 16 a call
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(
        d == tok.encode(f"request {i}", add_special_tokens=False) for i, d in enumerate(done) if i != 3
    )
    enc.close()


def test_a_failing_tokenizer_fails_every_waiting_request_and_a_closed_encoder_never_hangs(tok):
    enc = BatchEncoder(tok)
    enc.backend = Counting(enc.backend, fail=True)

    async def burst():
        return await asyncio.gather(*(enc.encode(f"r{i}", False) for i in range(5)), return_exceptions=True)

    out = asyncio.run(asyncio.wait_for(burst(), 10))
    assert all(isinstance(e, RuntimeError) and "tokenizer broke" in str(e) for e in out)
    enc.close()
    with pytest.raises(RuntimeError):
        asyncio.run(asyncio.wait_for(enc.encode("after close", False), 10))
