"""Token chunking: never over the limit, cuts at paragraph / sentence boundaries (Chinese too)."""

from __future__ import annotations

import random

import pytest

from tuneloop.data.chunk import Chunker, boundaries
from tuneloop.data.config import ChunkConfig

EN_PARA = (
    "The shipment left the warehouse on Monday. It reached the customer on Thursday. Everyone was pleased."
)
ZH_PARA = "货物在周一离开仓库。周四送达客户手中！大家都很满意。我们会继续改进服务质量，确保每一单都准时送达。"


@pytest.fixture
def chunker(tok_dir: str) -> Chunker:
    return Chunker(tok_dir, ChunkConfig(max_tokens=32))


def test_short_text_is_one_chunk(chunker: Chunker) -> None:
    assert chunker.chunks("Hello there.") == [("Hello there.", chunker.count(["Hello there."])[0])]


@pytest.mark.parametrize("seed", range(5))
def test_no_chunk_exceeds_the_limit_and_nothing_is_lost(chunker: Chunker, seed: int) -> None:
    rng = random.Random(seed)
    pieces = [EN_PARA, ZH_PARA, "x" * 300, "混合 mixed 文本 text " * 20, "a\nb\n" * 30]
    text = "\n\n".join(rng.choice(pieces) for _ in range(8))
    chunks = chunker.chunks(text)
    assert all(n <= 32 for _, n in chunks)
    assert all(n == chunker.count([c])[0] for c, n in chunks)  # the count is the chunk's own tokenization
    assert "".join(c for c, _ in chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace(
        "\n", ""
    )


def test_chinese_text_is_cut_after_chinese_sentence_punctuation(chunker: Chunker) -> None:
    chunks = chunker.chunks(ZH_PARA * 3)
    assert len(chunks) > 1
    assert all(c[-1] in "。！？，" for c, _ in chunks[:-1])


def test_paragraph_boundaries_are_preferred(tok_dir: str) -> None:
    chunker = Chunker(tok_dir, ChunkConfig(max_tokens=64))
    text = "\n\n".join(["Short para one. Two.", "Short para three. Four.", "Short para five. Six."] * 3)
    for chunk, _ in chunker.chunks(text)[:-1]:
        assert chunk.endswith(".") and text.find(chunk + "\n\n") >= 0


def test_overlap_repeats_the_tail_of_the_previous_chunk(tok_dir: str) -> None:
    chunker = Chunker(tok_dir, ChunkConfig(max_tokens=32, overlap=8))
    chunks = [c for c, _ in chunker.chunks(" ".join(f"word{i}" for i in range(80)))]
    assert len(chunks) > 2
    assert chunks[0].split()[-1] in chunks[1]


def test_boundaries_rank_paragraph_over_sentence_over_space() -> None:
    positions, prios = boundaries("Hi there. 你好。\n\nNext")
    ranked = dict(zip(positions, prios, strict=True))
    assert ranked[len("Hi there.")] == 3 and ranked[len("Hi there. 你好。")] == 3
    assert ranked[len("Hi there. 你好。\n\n")] == 5 and ranked[len("Hi ")] == 1
