"""Random text full of tokenizer edge cases, for the chunker and tokenizer tests (tests/data)."""

from __future__ import annotations

import random

WORDS = [
    "data", "model", "training", "Hello", "world", "it's", "don't", "we're", "I'll", "they've",
    "3.14", "2024", "e-mail", "U.S.", "naïve", "数据", "模型", "训练", "你好", "北京",
]  # fmt: skip
PIECES = (
    list("abcxyzABC") + list("的一是在不了有和人这中大为") + list("。，！？、；：“”‘’（）.,!?;:'\"()-_/@#$%&*…")
    + [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\t", " \n", "\n ", " \n\n  "]
    + ["'s", "'t", "'re", "'ll", " 's", "s'", "''", "'S", " '"]
    + list("0123456789")
    + ["é", "e\u0301", "😀", "👍🏽", "\u3000", "\xa0", "\u200b", "ﬁ", "Ⅻ", "½", "²", "٣", "ß", "Ω", "ж", "한", "カ"]
    + ["\u2028", "\x1c", "\x85", "\x0b", "\r", "𠀀", "\U0002ebf0", "<|im_start|>", "<|endoftext|>"]
)  # fmt: skip


def random_text(rng: random.Random, max_units: int = 120) -> str:
    style = rng.random()
    out: list[str] = []
    for _ in range(rng.randint(1, max_units)):
        r = rng.random()
        if style < 0.3:  # mostly English prose
            out.append(rng.choice(WORDS[:12]) if r < 0.7 else rng.choice(PIECES))
            out.append(" " if rng.random() < 0.7 else rng.choice([". ", ", ", "\n", "\n\n", "! "]))
        elif style < 0.5:  # mostly Chinese
            out.append(
                rng.choice(
                    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
                )
            )
            if r < 0.1:
                out.append(rng.choice("。，！？、；：\n"))
        else:  # anything
            out.append(rng.choice(WORDS) if r < 0.4 else rng.choice(PIECES))
            if rng.random() < 0.3:
                out.append(" ")
    return "".join(out)
