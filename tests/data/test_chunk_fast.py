"""The one-pass chunker is exact: property tests against real re-encoding and the two-pass reference.

`Chunker` encodes each document once (ids only, through tiktoken where it is exact) and, for
byte-level BPE tokenizers with the GPT-2 pre-tokenizer, derives token starts from byte lengths and
counts most chunks from the document's own tokens (`chunk._ByteLevel`). These tests prove, over many random English / Chinese / mixed
texts full of edge cases (contractions, digits, emoji, combining marks, odd whitespace, special
tokens) and several tokenizers, that
  1. the derived token starts are `Encoding.offsets` starts,
  2. every count the fast path claims equals the count of re-encoding the chunk on its own,
  3. the chunks (texts and counts) are exactly those of the two-pass reference algorithm
     (encode with offsets, cut, re-encode every piece), which is what shipped before,
and that tokenizers outside the proof (Metaspace, WordPiece with a normalizer, a prefix space)
take the exact path and still respect the limit.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from pathlib import Path

import pytest
from textgen import random_text

from tuneloop.data import chunk as chunk_mod
from tuneloop.data.chunk import Chunker, boundaries, load_tokenizer
from tuneloop.data.config import ChunkConfig


def _other(tmp: Path, kind: str) -> str:
    """Tokenizers outside the fast path's proof: they must take the exact path."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    rng = random.Random(11)
    corpus = [random_text(rng, 200) for _ in range(300)]
    if kind == "metaspace":  # SentencePiece style
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"], show_progress=False)
    elif kind == "wordpiece":  # BERT style: a lower-casing normalizer
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]"], show_progress=False)
    else:  # byte-level with a prefix space: the first pre-token of a chunk changes
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
    tok.train_from_iterator(corpus, trainer=trainer)
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    return str(tmp)


def _encode(tok, text: str):
    return tok.encode(text, add_special_tokens=False)


def test_the_fast_path_applies_to_byte_level_gpt2_tokenizers(fast_dir: str) -> None:
    assert chunk_mod._byte_level(fast_dir) is not None


def test_token_starts_from_byte_lengths_are_the_offsets(fast_dir: str) -> None:
    tok, fast = load_tokenizer(fast_dir), chunk_mod._byte_level(fast_dir)
    rng = random.Random(1)
    laid = 0
    for _ in range(1500):
        text = random_text(rng)
        enc = _encode(tok, text)
        layout = fast.layout(text, enc.ids)
        if layout is not None:  # None: special tokens in the text (they take the exact path)
            laid += 1
            assert layout.starts == [o[0] for o in enc.offsets], text
    assert laid > 500


def test_fast_counts_equal_re_encoding_the_chunk(fast_dir: str) -> None:
    """Every cut at a token start (the only cuts the chunker makes), checked against real encoding."""
    tok, fast = load_tokenizer(fast_dir), chunk_mod._byte_level(fast_dir)
    rng = random.Random(2)
    claimed = checked = 0
    for _ in range(1500):
        text = random_text(rng)
        enc = _encode(tok, text)
        layout = fast.layout(text, enc.ids)
        if layout is None:
            continue
        starts = layout.starts
        cuts = sorted({*rng.sample(range(len(starts)), min(len(starts), 8)), len(starts)})
        for i, j in itertools.pairwise(cuts):
            a, b = starts[i], starts[j] if j < len(starts) else len(text)
            piece = text[a:b]
            if not piece.strip():
                continue
            checked += 1
            n = layout.count(piece, a, fast)
            if n is not None:
                claimed += 1
                assert n == len(_encode(tok, piece.strip()).ids), (text, a, b)
    assert checked > 3000 and claimed > 500  # random cuts: most fall inside words, where no claim is made


def _reference_chunks(tok, text: str, max_tokens: int, overlap: int) -> list[tuple[str, int]]:
    """The two-pass chunker as it shipped before: offsets from encode, every piece re-encoded."""

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    def best_cut(starts, s, limit, positions, prios):
        lo_tok, hi_tok = s + max(limit // 2, 1), s + limit
        lo = bisect.bisect_left(positions, starts[lo_tok])
        hi = bisect.bisect_right(positions, starts[hi_tok])
        best_e, best_p = hi_tok, 0
        for i in range(lo, hi):
            e = bisect.bisect_left(starts, positions[i], lo_tok, hi_tok + 1)
            if e <= hi_tok and starts[e] >= positions[i] and prios[i] >= best_p and e > s:
                best_e, best_p = e, prios[i]
        return best_e

    def cut(text, starts, limit):
        positions, prios = boundaries(text)
        n, s, pieces = len(starts), 0, []
        while s < n:
            if n - s <= limit:
                pieces.append(text[starts[s] :])
                break
            e = best_cut(starts, s, limit, positions, prios)
            pieces.append(text[starts[s] : starts[e]])
            s = max(e - overlap, s + 1)
        return pieces

    def fit(text, limit, depth):
        enc = _encode(tok, text)
        if len(enc.ids) <= max_tokens:
            return [(text, len(enc.ids))] if text.strip() else []
        pieces = [s for p in cut(text, [o[0] for o in enc.offsets], limit) if (s := p.strip())]
        out = []
        for piece, n in zip(pieces, count(pieces), strict=True):
            if n <= max_tokens:
                out.append((piece, n))
            elif depth < 8:
                out += fit(piece, max(limit - (n - max_tokens) - 2, 1), depth + 1)
            else:
                raise RuntimeError("could not fit")
        return out

    return fit(text, max_tokens, 0)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (16, 3), (64, 0)])
def test_chunks_are_those_of_the_two_pass_reference(fast_dir: str, max_tokens: int, overlap: int) -> None:
    chunker = Chunker(fast_dir, ChunkConfig(max_tokens=max_tokens, overlap=overlap))
    rng = random.Random(max_tokens * 31 + overlap)
    texts = [random_text(rng, 300) for _ in range(250)]
    got = chunker.chunks_batch(texts)
    for text, chunks in zip(texts, got, strict=True):
        assert chunks == _reference_chunks(chunker.tok, text, max_tokens, overlap), text
        assert all(n <= max_tokens and n == len(_encode(chunker.tok, c).ids) for c, n in chunks)


@pytest.mark.parametrize("kind", ["metaspace", "wordpiece", "prefix-space"])
def test_other_tokenizers_take_the_exact_path(kind: str, tmp_path: Path) -> None:
    folder = _other(tmp_path / kind, kind)
    assert chunk_mod._byte_level(folder) is None
    chunker = Chunker(folder, ChunkConfig(max_tokens=16))
    rng = random.Random(5)
    texts = [random_text(rng, 200) for _ in range(60)]
    for text, chunks in zip(texts, chunker.chunks_batch(texts), strict=True):
        assert chunks == _reference_chunks(chunker.tok, text, 16, 0)
        assert all(n <= 16 and n == len(_encode(chunker.tok, c).ids) for c, n in chunks)


def test_tokenizer_spec_gates_the_fast_path(tok_dir: str, tmp_path: Path) -> None:
    """Dropout, a normalizer or an offset-trimming post-processor each switch the fast path off."""
    spec = json.loads(load_tokenizer(tok_dir).to_str())
    variants = {
        "dropout": lambda s: s["model"].update(dropout=0.1),
        "normalizer": lambda s: s.update(normalizer={"type": "Lowercase"}),
        "post": lambda s: s.update(
            post_processor={
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            }
        ),
        "no-regex": lambda s: s["pre_tokenizer"].update(use_regex=False),
    }
    for name, change in variants.items():
        s = json.loads(json.dumps(spec))
        change(s)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps(s))
        assert chunk_mod._byte_level(str(folder)) is None, name


def test_whole_document_counts_equal_the_tokenizer(fast_dir: str) -> None:
    """Documents under the limit are counted from tiktoken's ids where it applies: the tokenizer's counts."""
    chunker = Chunker(fast_dir, ChunkConfig(max_tokens=10_000))
    assert chunker.fast is not None and chunker.fast.tt is not None  # the tiktoken path is under test
    tok = chunker.tok
    rng = random.Random(4)
    texts = [random_text(rng, 150) for _ in range(400)]
    got = [c for cs in chunker.chunks_batch(texts) for c in cs]
    assert got == [(t, len(_encode(tok, t).ids)) for t in texts if t.strip()]
    assert chunker.count(texts) == [len(_encode(tok, t).ids) for t in texts]
