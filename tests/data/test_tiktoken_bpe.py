"""tiktoken gives the tokenizer's own ids (`tiktoken_bpe.TiktokenBPE`), or declines and says why.

Checked against `tokenizers` itself: random text full of edge cases and real text (the docs and
code of the installed packages, Chinese message catalogues) with the tiny test tokenizer, a trained
2k byte-level BPE and SmolLM2's when present; the proof's conditions on hand-made vocabularies (a
token the merges cannot reach, merges out of id order); the character probe against a regex that
classifies characters differently; added tokens; and each way of falling back.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

import pytest
import tiktoken
from textgen import random_text
from tokenizers import Tokenizer, models, pre_tokenizers

from tuneloop.data import chunk as chunk_mod
from tuneloop.data import tiktoken_bpe
from tuneloop.data.chunk import Chunker, load_tokenizer
from tuneloop.data.config import ChunkConfig
from tuneloop.data.tiktoken_bpe import GPT2_PATTERN, TiktokenBPE


def _hf_ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def test_ids_equal_the_tokenizer_on_random_text(fast_dir: str) -> None:
    tok = load_tokenizer(fast_dir)
    bpe = TiktokenBPE.of(tok)
    assert bpe is not None
    rng = random.Random(21)
    own = 0
    for _ in range(3000):
        text = random_text(rng, 150)
        ids = bpe.encode(text)
        if ids is not None:
            own += 1
            assert ids == _hf_ids(tok, text), text
    assert own > 2500  # declined: only text with bytes missing from a small vocabulary


@lru_cache(maxsize=1)
def _real_texts(limit: int) -> list[str]:
    """Docs and code of the installed packages (sorted, so the same every run) and zh_CN catalogues."""
    root = Path(sysconfig.get_paths()["purelib"])
    out: list[str] = []
    for suffix, budget in ((".md", limit), (".py", limit)):
        size = 0
        for path in sorted(root.glob(f"*/**/*{suffix}"))[::7]:
            try:
                text = path.read_text(encoding="utf-8")[:50_000]
            except (UnicodeDecodeError, OSError):
                continue
            out.append(text)
            size += len(text)
            if size > budget:
                break
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    try:
        import pii_corpus
    finally:
        sys.path.pop(0)
    return out + pii_corpus.chinese_docs(limit)


def test_ids_equal_the_tokenizer_on_real_text(fast_dir: str) -> None:
    tok = load_tokenizer(fast_dir)
    bpe = TiktokenBPE.of(tok)
    texts = _real_texts(300_000)
    assert len(texts) > 20
    declined = 0
    for text in texts:
        ids = bpe.encode(text)
        declined += ids is None
        assert ids is None or ids == _hf_ids(tok, text), text[:200]
    assert declined < len(texts) / 10


def _tiny_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], added=()) -> Tokenizer:
    """A byte-level BPE over the bytes a-d only, with the given merges (ids after the 256 bytes)."""
    from tokenizers import AddedToken

    alphabet = {b: c for c, b in _byte_chars().items()}
    full = {alphabet[b]: b for b in range(256)} | vocab
    tok = Tokenizer(models.BPE(full, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for a in added:
        tok.add_special_tokens([AddedToken(**a)])
    return tok


def _byte_chars() -> dict[str, int]:
    table = tiktoken_bpe._byte_table()
    return {chr(k): ord(v) for k, v in table.items() if v != "\uffff"}


def test_a_token_the_merges_cannot_reach_is_left_out(tmp_path: Path) -> None:
    """merges b+c, a+b, ab+c: the tokenizer makes a|bc of "abc" and never "abc"; tiktoken holding
    "abc" would return it whole, so it is not given that token, and the ids agree."""
    tok = _tiny_bpe({"bc": 256, "ab": 257, "abc": 258}, [("b", "c"), ("a", "b"), ("ab", "c")])
    assert _hf_ids(tok, "abc") == [ord("a"), 256]
    raw = tiktoken.Encoding(
        "raw",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258},
        special_tokens={},
    )
    assert raw.encode_ordinary("abc") == [258]  # what plain tiktoken would get wrong
    bpe = TiktokenBPE.of(tok)
    assert bpe is not None
    for text in ["abc", "abcabc abc", "aabbcc", "cab abcd", "bcab"]:
        assert bpe.encode(text) == _hf_ids(tok, text), text


def test_merges_out_of_id_order_are_left_to_the_tokenizer(tmp_path: Path, caplog) -> None:
    tok = _tiny_bpe({"ab": 257, "bc": 256}, [("a", "b"), ("b", "c")])
    with caplog.at_level(logging.INFO, logger="tuneloop.data"):
        assert TiktokenBPE.of(tok) is None
    assert "merges do not make their tokens in id order" in caplog.text


def test_added_tokens_are_cut_out_like_the_tokenizer_does(fast_dir: str) -> None:
    tok = load_tokenizer(fast_dir)
    bpe = TiktokenBPE.of(tok)
    added = list(bpe.added)
    assert added
    rng = random.Random(5)
    for _ in range(500):
        parts = [
            rng.choice([*added, "x", " ", "  ", "\n", "hello", "<", ">", "|", "数据", "'s"])
            for _ in range(12)
        ]
        text = "".join(parts)
        assert bpe.encode(text) == _hf_ids(tok, text), text


def test_added_tokens_with_options_leave_the_tokenizer_in_charge(tmp_path: Path, caplog) -> None:
    added = [{"content": "<sep>", "lstrip": True}]
    tok = _tiny_bpe({"ab": 256}, [("a", "b")], added)
    with caplog.at_level(logging.INFO, logger="tuneloop.data"):
        assert TiktokenBPE.of(tok) is None
    assert "added tokens with options" in caplog.text


def test_the_probe_finds_characters_the_engines_classify_differently() -> None:
    """With tiktoken's regex changed so that only ASCII digits are numbers, only ASCII letters are
    letters and only ASCII whitespace is whitespace, the probe flags exactly the characters whose
    class changed (superscripts, Chinese, a no-break space) and keeps the others."""
    probe = tiktoken_bpe._Probe({bytes([b]) for b in range(256)})
    hf, tt = probe._engines()
    sp = r"[ \t\n\r\f\v]"
    narrow = rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[a-zA-Z]+| ?[0-9]+| ?[^ \t\n\r\f\va-zA-Z0-9]+|{sp}+(?!{sp[:1]}^{sp[1:]})|{sp}+"""
    ranks = tt._mergeable_ranks
    probe.engines = (
        hf,
        tiktoken.Encoding("narrow", pat_str=narrow, mergeable_ranks=ranks, special_tokens={}),
    )
    changed, kept = ["²", "中", "\xa0", "é", "٣"], ["!", "…", "—", "😀"]
    assert probe._check(changed) == [False] * len(changed)
    assert probe._check(kept) == [True] * len(kept)


def test_every_character_is_checked_once_and_bad_ones_decline(fast_dir: str) -> None:
    bpe = TiktokenBPE.of(load_tokenizer(fast_dir))
    probe = bpe._probe
    assert bpe.encode("naïve 数据 😀") is not None
    assert {"ï", "数", "据", "😀"} <= probe.good
    probe.good.discard("数")
    probe.bad.add("数")  # as if the engines disagreed on it
    assert bpe.encode("数据") is None
    assert bpe.encode("据") is not None


def test_bytes_missing_from_the_vocabulary_are_left_to_the_tokenizer(tmp_path: Path) -> None:
    """The tokenizer drops a byte it has no token for; tiktoken cannot, so it declines."""
    alphabet = {b: c for c, b in _byte_chars().items()}
    vocab = {alphabet[b]: i for i, b in enumerate(b for b in range(256) if b != 0x04)}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe = TiktokenBPE.of(tok)
    assert bpe is not None
    assert len(_hf_ids(tok, "a\x04b")) == 2  # the byte is gone
    assert bpe.encode("a\x04b") is None
    assert bpe.encode("ab") == _hf_ids(tok, "ab")


def test_the_chunker_uses_the_tokenizer_where_tiktoken_declines(tok_dir: str) -> None:
    chunker = Chunker(tok_dir, ChunkConfig(max_tokens=10_000))
    tt = chunker.fast.tt
    tt._probe.good.discard("中")
    tt._probe.bad.add("中")
    try:
        texts = ["中文 text", "plain text", "<|im_start|>中"]
        assert chunker.count(texts) == [len(_hf_ids(chunker.tok, t)) for t in texts]
    finally:
        tt._probe.bad.discard("中")


def test_without_tiktoken_the_tokenizer_encodes(tok_dir: str, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken raises ImportError
    with caplog.at_level(logging.INFO, logger="tuneloop.data"):
        assert TiktokenBPE.of(load_tokenizer(tok_dir)) is None
    assert "tiktoken is not installed" in caplog.text
    fast = chunk_mod._ByteLevel.of(load_tokenizer(tok_dir))
    assert fast is not None and fast.tt is None
    assert fast.encode_ids(["hello world"]) == [_hf_ids(load_tokenizer(tok_dir), "hello world")]


def test_smollm2_keeps_every_token(fast_dir: str) -> None:
    """The default model's tokenizer meets the proof's conditions for all its tokens but the added ones."""
    if "smollm2" not in fast_dir:
        pytest.skip("SmolLM2 only")
    spec = json.loads(load_tokenizer(fast_dir).to_str())
    _, ranks = tiktoken_bpe._ranks(load_tokenizer(fast_dir), spec)
    assert len(ranks) == len(spec["model"]["vocab"]) - len(spec["added_tokens"])
