"""The incremental detokenizer against a full decode: split UTF-8 characters, spaces, special tokens, stops."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from tuneloop.models.tiny import build_tokenizer
from tuneloop.serve.detokenizer import Detokenizer, _StreamDecoder, _WindowDecoder, incremental_decoder

SMOLLM2 = Path(__file__).resolve().parents[2] / ".devcarry" / "smollm2-shape"
TEXTS = [
    "Hello world",
    "你好，世界！这是一个测试。",  # each character is 3 bytes: split over byte-level tokens
    "  two  spaces,\ttabs\tand\nnew\n\nlines  ",
    "naïve café — Ünïcödé, emoji 🙂🚀 and 👩‍👩‍👧 (a ZWJ sequence)",
    " leading space and trailing ",
    "mixed 中文 and English, 日本語のテキスト, 한국어 텍스트",
]


def _byte_bpe():
    return build_tokenizer()


def _smollm2():
    if not (SMOLLM2 / "tokenizer.json").is_file():
        pytest.skip("the SmolLM2 tokenizer files are not carried here")
    from tuneloop.models.loading import load_tokenizer

    return load_tokenizer(SMOLLM2)


def _sentencepiece_like():
    """A Llama-2 style tokenizer: Metaspace pre-tokenizer, byte fallback, <s> added at the start."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_])
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


TOKENIZERS = {"byte_bpe": _byte_bpe, "smollm2": _smollm2, "sentencepiece_like": _sentencepiece_like}


def _with_specials(tok, ids: list[int], rng: random.Random) -> list[int]:
    specials = [i for i in tok.all_special_ids if i is not None]
    out = list(ids)
    for _ in range(3):
        out.insert(rng.randrange(len(out) + 1), rng.choice(specials))
    return out


def _stream(detok: Detokenizer, ids: list[int], rng: random.Random) -> str:
    """Feed ids as the engine does: mostly one per step, sometimes several (a chunk, a spec. decode)."""
    text, i = "", 0
    while i < len(ids):
        n = rng.choice([1, 1, 1, 2, 3])
        text += detok.add(ids[i : i + n])
        i += n
    return text + detok.finish()


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("decoder", ["fastest", "window"])
def test_incremental_text_equals_the_full_decode(name, decoder):
    tok = TOKENIZERS[name]()
    rng = random.Random(0)
    for text in TEXTS:
        for trial in range(4):
            ids = tok.encode(text, add_special_tokens=True)
            if trial:  # special tokens anywhere are skipped, as by decode(skip_special_tokens=True)
                ids = _with_specials(tok, ids, rng)
            detok = Detokenizer(tok)
            if decoder == "window":
                detok.decoder = _WindowDecoder(tok)
            assert _stream(detok, ids, rng) == tok.decode(ids, skip_special_tokens=True), (text, ids)


def test_a_fast_tokenizer_decodes_through_decode_stream():
    assert isinstance(incremental_decoder(_byte_bpe()), _StreamDecoder)


def test_a_split_character_is_held_back_until_complete():
    tok = _byte_bpe()
    ids = tok.encode("界", add_special_tokens=False)
    assert len(ids) > 1  # three bytes, several tokens in this small vocabulary
    detok = Detokenizer(tok)
    pieces = [detok.add([i]) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "界"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["世界"], "你好，"),  # a stop of multi-byte characters, split over many tokens
        (["，世", "好"], "你"),  # the earliest of several stops wins
        (["不在"], "你好，世界！这是一个测试。"),  # no match: everything, the held-back tail included
        (["测试。"], "你好，世界！这是一个"),  # a stop at the very end
    ],
)
def test_stop_strings_end_the_text_before_them(stop, expected):
    tok = _byte_bpe()
    ids = tok.encode(TEXTS[1], add_special_tokens=False)
    rng = random.Random(1)
    detok = Detokenizer(tok, stop)
    out = _stream_until_stop(detok, ids, rng)
    assert out == expected
    assert detok.stopped == (expected != TEXTS[1])


def _stream_until_stop(detok: Detokenizer, ids: list[int], rng: random.Random) -> str:
    text, i = "", 0
    while i < len(ids) and not detok.stopped:
        n = rng.choice([1, 2])
        text += detok.add(ids[i : i + n])
        i += n
    return text + detok.finish()


def test_no_text_that_could_start_a_stop_is_shown_early():
    tok = _byte_bpe()
    detok = Detokenizer(tok, ["END"])
    shown = ""
    for i in tok.encode("the ENd of it, the END", add_special_tokens=False):
        shown += detok.add([i])
        assert not shown.endswith(("E", "EN")), shown  # held back until known not to be a stop
    assert shown == "the ENd of it, the " and detok.stopped


def test_random_ids_never_show_text_the_full_decode_lacks():
    """Any ids (invalid UTF-8 runs included): the streamed text is the full decode, or its prefix
    before a trailing incomplete character that never completed."""
    tokenizers = [_byte_bpe()] + ([_smollm2()] if (SMOLLM2 / "tokenizer.json").is_file() else [])
    rng = random.Random(2)
    for tok, _ in itertools.product(tokenizers, range(100)):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
        full = tok.decode(ids, skip_special_tokens=True)
        out = _stream(Detokenizer(tok), ids, rng)
        assert out == full or (full.startswith(out) and full[len(out) :].strip("\ufffd") == ""), (
            ids,
            out,
            full,
        )


def test_finish_appends_nothing_when_the_whole_decode_is_not_a_continuation():
    """A tokenizer whose one-shot decode differs from its streamed text (whitespace clean-up, say):
    finish() must not append a misaligned tail of it."""
    tok = _byte_bpe()
    detok = Detokenizer(tok)
    shown = "".join(detok.add([i]) for i in tok.encode("hello world", add_special_tokens=False))
    real = tok.decode
    tok.decode = lambda ids, **kw: " " + real(ids, **kw)  # the one-shot decode adds a leading space
    try:
        assert detok.finish() == "" and shown == "hello world"
    finally:
        del tok.decode
