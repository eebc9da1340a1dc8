"""Token-aware chunking for pretraining: pieces of at most `max_tokens` tokens of the real tokenizer.

Cuts fall at the best boundary in the second half of the window: a paragraph, else a line, else a
sentence end (。！？ and .!? alike), else a clause mark (，、；： ,;:), else whitespace, else between
tokens. Every chunk is re-tokenized on its own and re-cut if it came out over the limit (tokenizers
merge differently at a cut), so the limit holds for what the trainer will see.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuneloop.data.config import ChunkConfig

# (pattern, priority): the cut goes right after the match
_BOUNDARIES = (
    (re.compile(r"\n[ \t]*\n\s*"), 5),
    (re.compile(r"\n"), 4),
    (re.compile(r"[。！？!?…]+[”’」』）)\"']*|\.+[\"')\]]*(?=\s)"), 3),
    (re.compile(r"[；;：:，,、]"), 2),
    (re.compile(r"\s+"), 1),
)


def tokenizer_path(ref: str) -> str:
    """A local folder with the tokenizer for `ref` (a folder, or a model reference resolved by the model store)."""
    path = Path(ref).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return str(path.resolve())
    from tuneloop.models.resolve import resolve_model

    return str(resolve_model(ref, pull=True).path)


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """The fast (Rust) tokenizer: `tokenizers` directly when there is a tokenizer.json, else via transformers."""
    file = Path(path) / "tokenizer.json"
    if file.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if not tok.is_fast:
        raise ValueError(f"the tokenizer in {path} has no fast version; chunking needs token offsets")
    return tok.backend_tokenizer


def boundaries(text: str) -> tuple[list[int], list[int]]:
    """Sorted cut positions (characters) and their priorities, best priority kept per position."""
    best: dict[int, int] = {}
    for pattern, prio in _BOUNDARIES:
        for m in pattern.finditer(text):
            if best.get(m.end(), 0) < prio:
                best[m.end()] = prio
    positions = sorted(best)
    return positions, [best[p] for p in positions]


class Chunker:
    def __init__(self, tokenizer_dir: str, cfg: ChunkConfig):
        self.dir = tokenizer_dir
        self.tok = load_tokenizer(tokenizer_dir)
        self.max, self.overlap = cfg.max_tokens, cfg.overlap
        self._chat: Any = None

    @property
    def chat(self) -> Any:
        """Counts chat rows with the chat template (`chat_tokens.ChatCounter`), made on first use."""
        if self._chat is None:
            from tuneloop.data.chat_tokens import ChatCounter

            self._chat = ChatCounter(self.dir, self)
        return self._chat

    def count(self, texts: list[str]) -> list[int]:
        # encode_batch_fast skips offsets (tokenizers >= 0.21): counting needs none
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [len(e.ids) for e in encode(texts, add_special_tokens=False)]

    def chunks(self, text: str) -> list[tuple[str, int]]:
        """(chunk text, token count) pairs covering `text`, each within the limit."""
        return self._fit(text, self.max, depth=0)

    def _fit(self, text: str, limit: int, depth: int) -> list[tuple[str, int]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= self.max:
            return [(text, len(enc.ids))] if text.strip() else []
        pieces = [s for p in self._cut(text, [o[0] for o in enc.offsets], limit) if (s := p.strip())]
        out: list[tuple[str, int]] = []
        for piece, n in zip(pieces, self.count(pieces), strict=True):
            if n <= self.max:
                out.append((piece, n))
            elif depth < 8:  # merges across the cut made it longer: cut this piece tighter
                out += self._fit(piece, max(limit - (n - self.max) - 2, 1), depth + 1)
            else:
                raise RuntimeError(f"could not fit a chunk into {self.max} tokens")
        return out

    def _cut(self, text: str, starts: list[int], limit: int) -> list[str]:
        positions, prios = boundaries(text)
        n, s, pieces = len(starts), 0, []
        while s < n:
            if n - s <= limit:
                pieces.append(text[starts[s] :])
                break
            e = self._best_cut(starts, s, limit, positions, prios)
            pieces.append(text[starts[s] : starts[e]])
            s = max(e - self.overlap, s + 1)
        return pieces

    @staticmethod
    def _best_cut(starts: list[int], s: int, limit: int, positions: list[int], prios: list[int]) -> int:
        """Token index where the next chunk starts: the best boundary in the window's second half."""
        lo_tok, hi_tok = s + max(limit // 2, 1), s + limit
        lo = bisect.bisect_left(positions, starts[lo_tok])
        hi = bisect.bisect_right(positions, starts[hi_tok])
        best_e, best_p = hi_tok, 0
        for i in range(lo, hi):
            e = bisect.bisect_left(starts, positions[i], lo_tok, hi_tok + 1)
            if e <= hi_tok and starts[e] >= positions[i] and prios[i] >= best_p and e > s:
                best_e, best_p = e, prios[i]
        return best_e
