"""Token-aware chunking for pretraining: pieces of at most `max_tokens` tokens of the real tokenizer.

Cuts fall at the best boundary in the second half of the window: a paragraph, else a line, else a
sentence end (。！？ and .!? alike), else a clause mark (，、；： ,;:), else whitespace, else between
tokens. The count stored with a chunk is always the token count of the chunk text on its own, and
a chunk that came out over the limit (tokenizers merge differently at a cut) is re-cut, so the
limit holds for what the trainer will see.

Speed (one tokenizer pass per document): documents are encoded in batches, ids only; for byte-level
BPE tokenizers the ids come from tiktoken wherever it provably gives the tokenizer's own ids
(tiktoken_bpe.py, 3-7x faster), token start positions from the tokens' byte lengths (`_ByteLevel`),
and a chunk whose edges fall on pre-token boundaries is counted from the document's tokens instead of
being encoded again (`_ByteLevel.count`, proved against real re-encoding by tests/data/test_chunk.py).
Any other tokenizer, and any chunk where that argument does not apply, takes the exact path:
offsets from `encode`, and a re-count of the chunk.
"""

from __future__ import annotations

import bisect
import json
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

from tuneloop.data.chat_tokens import ChatCounter
from tuneloop.data.config import ChunkConfig
from tuneloop.data.tiktoken_bpe import TiktokenBPE
from tuneloop.models.resolve import resolve_model

# (pattern, priority): the cut goes right after the match
_BOUNDARIES = (
    (re.compile(r"\n[ \t]*\n\s*"), 5),
    (re.compile(r"\n"), 4),
    (re.compile(r"[。！？!?…]+[”’」』）)\"']*|\.+[\"')\]]*(?=\s)"), 3),
    (re.compile(r"[；;：:，,、]"), 2),
    (re.compile(r"\s+"), 1),
)
_BATCH = 64  # documents per tokenizer call


def tokenizer_path(ref: str) -> str:
    """A local folder with the tokenizer for `ref` (a folder, or a model reference resolved by the model store)."""
    path = Path(ref).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return str(path.resolve())
    return str(resolve_model(ref, pull=True).path)


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Tokenizer:
    """The fast (Rust) tokenizer: `tokenizers` directly when there is a tokenizer.json, else via transformers."""
    file = Path(path) / "tokenizer.json"
    if file.is_file():
        return Tokenizer.from_file(str(file))
    from transformers import AutoTokenizer  # 1.4 s to import: only folders without tokenizer.json pay it

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


class _Boundaries:
    """`boundaries(text)` by priority, computed lazily: whitespace (dense) only when a window needs it.

    The best cut in a character range is the last position of the highest priority found there,
    which is what a scan over `boundaries()` picks (a later position wins a tie).
    """

    def __init__(self, text: str):
        self.text = text
        self.ends: dict[int, list[int]] = {}

    def best(self, lo: int, hi: int) -> int | None:
        """The best cut position p with lo <= p <= hi, or None."""
        for pattern, prio in _BOUNDARIES:
            ends = self.ends.get(prio)
            if ends is None:
                ends = self.ends[prio] = [m.end() for m in pattern.finditer(self.text)]
            i = bisect.bisect_right(ends, hi)
            if i and ends[i - 1] >= lo:
                return ends[i - 1]
        return None


class Chunker:
    def __init__(self, tokenizer_dir: str, cfg: ChunkConfig):
        self.dir = tokenizer_dir
        self.tok = load_tokenizer(tokenizer_dir)
        self.max, self.overlap = cfg.max_tokens, cfg.overlap
        self._chat: ChatCounter | None = None
        self.fast = _byte_level(tokenizer_dir)
        self._encode_ids = self.fast.encode_ids if self.fast is not None else _ids_encoder(self.tok)

    @property
    def chat(self) -> ChatCounter:
        """Counts chat rows with the chat template (`chat_tokens.ChatCounter`), made on first use."""
        if self._chat is None:
            self._chat = ChatCounter(self.dir, self.count)
        return self._chat

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._encode_ids(texts)] if texts else []

    def chunks(self, text: str) -> list[tuple[str, int]]:
        """(chunk text, token count) pairs covering `text`, each within the limit."""
        return self.chunks_batch([text])[0]

    def chunks_batch(self, texts: list[str]) -> list[list[tuple[str, int]]]:
        """`chunks` of each text; texts are encoded in batches (one tokenizer call per `_BATCH`)."""
        out: list[list[tuple[str, int]]] = []
        for i in range(0, len(texts), _BATCH):
            out += self._fit_batch(texts[i : i + _BATCH], self.max, 0)
        return out

    def _fit_batch(self, texts: list[str], limit: int, depth: int) -> list[list[tuple[str, int]]]:
        fast = self.fast
        results: list[list[tuple[str, int]]] = []
        pending: list[tuple[int, str, int | None]] = []  # (result index, piece, count if known)
        for text, ids in zip(texts, self._encode_ids(texts), strict=True):
            if len(ids) <= self.max:
                results.append([(text, len(ids))] if text.strip() else [])
                continue
            layout = fast.layout(text, ids) if fast is not None else None
            starts = layout.starts if layout is not None else _offset_starts(self.tok, text)
            for a, b in self._cut(text, starts, limit):
                piece = text[a:b]
                s = piece.strip()
                if s:
                    n = layout.count(piece, a, fast) if layout is not None else None
                    pending.append((len(results), s, n))
            results.append([])
        unknown = [p for _, p, n in pending if n is None]
        counts = iter(self.count(unknown))
        for r, piece, n in pending:
            n = next(counts) if n is None else n
            if n <= self.max:
                results[r].append((piece, n))
            elif depth < 8:  # merges across the cut made it longer: cut this piece tighter
                results[r] += self._fit_batch([piece], max(limit - (n - self.max) - 2, 1), depth + 1)[0]
            else:
                raise RuntimeError(f"could not fit a chunk into {self.max} tokens")
        return results

    def _cut(self, text: str, starts: list[int], limit: int) -> list[tuple[int, int]]:
        """Character ranges of the pieces, each starting at a token start."""
        bounds = _Boundaries(text)
        n, s, pieces = len(starts), 0, []
        while s < n:
            if n - s <= limit:
                pieces.append((starts[s], len(text)))
                break
            e = self._best_cut(starts, s, limit, bounds)
            pieces.append((starts[s], starts[e]))
            s = max(e - self.overlap, s + 1)
        return pieces

    @staticmethod
    def _best_cut(starts: list[int], s: int, limit: int, bounds: _Boundaries) -> int:
        """Token index where the next chunk starts: the best boundary in the window's second half."""
        lo_tok, hi_tok = s + max(limit // 2, 1), s + limit
        pos = bounds.best(starts[lo_tok], starts[hi_tok])
        if pos is None:
            return hi_tok
        return bisect.bisect_left(starts, pos, lo_tok, hi_tok + 1)


def preload(path: str) -> None:
    """Load what a `Chunker` for `path` needs (before forking workers, which then share it)."""
    _byte_level(path)


@lru_cache(maxsize=4)
def _byte_level(path: str) -> _ByteLevel | None:
    return _ByteLevel.of(load_tokenizer(path))


def _ids_encoder(tok: Tokenizer) -> Callable[[list[str]], list[list[int]]]:
    # encode_batch_fast skips offsets (tokenizers >= 0.21): counting needs none
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]


def _offset_starts(tok: Tokenizer, text: str) -> list[int]:
    return [o[0] for o in tok.encode(text, add_special_tokens=False).offsets]


# -- byte-level BPE with the GPT-2 pre-tokenizer: starts from byte lengths, counts without re-encoding --

_L, _N, _P, _WS, _UNSURE = range(5)
_ASCII_WS = frozenset(" \t\n\r\x0b\x0c")


@lru_cache(maxsize=4096)
def _char_class(c: str) -> int:
    """The GPT-2 pre-tokenizer's classes: letter (\\p{L}), number (\\p{N}), whitespace, other; or unsure."""
    if c in _ASCII_WS:
        return _WS
    if ord(c) > 0xFFFF:
        return _UNSURE  # newer planes: Python's and onig's Unicode versions may disagree
    cat = unicodedata.category(c)
    if c.isspace() or cat in ("Zs", "Zl", "Zp", "Cc", "Cn", "Cs", "Co"):
        return _UNSURE  # rare whitespace/control/unassigned: Python's tables may differ from onig's
    return _L if cat[0] == "L" else _N if cat[0] == "N" else _P


def _split_between(x: str, y: str) -> bool:
    """Whether the GPT-2 pre-tokenizer surely splits between two adjacent non-space characters x, y.

    Runs of letters, of numbers and of other symbols are separate pre-tokens; the contractions
    ('s 't 're 've 'm 'll 'd) cross those classes, so an apostrophe on either side is "not sure".
    """
    if x == "'" or y == "'":
        return False
    cx, cy = _char_class(x), _char_class(y)
    return cx != cy and _UNSURE not in (cx, cy) and _WS not in (cx, cy)


def _run_end(text: str, i: int, end: int) -> int:
    """End of the run of characters of text[i]'s class (letters, numbers or other symbols) before `end`."""
    c = _char_class(text[i])
    j = i + 1
    while j < end and _char_class(text[j]) == c and text[j] != "'":
        j += 1
    return j


class _ByteLevel:
    """What a byte-level BPE tokenizer with the GPT-2 pre-tokenizer allows (smollm2, GPT-2, the tiny test models).

    1. Every token is a run of the text's UTF-8 bytes, so token starts follow from the tokens' byte
       lengths (no offsets needed); a token's character start is that of the character holding its
       first byte, as in `Encoding.offsets`.
    2. The pre-tokenizer (regex, no look-behind) splits text into runs of letters, numbers, other
       symbols and whitespace, a single space joining the run after it; BPE works inside each
       pre-token. So a chunk text[a:b] whose ends are pre-token boundaries of the whole text
       pre-tokenizes into exactly the whole text's pre-tokens in that range, and its token count is
       the number of the document's tokens in the range. A chunk that lost a leading space to
       strip() starts with a shortened pre-token: that one pre-token is encoded alone.
    Anything else (other tokenizers, special tokens in the text, rare characters at an edge, a cut
    inside a pre-token) is re-encoded.
    """

    def __init__(self, tok: Tokenizer, lengths: np.ndarray, tt: TiktokenBPE | None = None):
        self.tok = tok
        self.tt = tt  # the same ids as `tok`, faster (tiktoken_bpe.py)
        self.lengths = lengths  # bytes per token id; -1 for special/added tokens and unknown strings
        self.heads: dict[str, int] = {}
        self._encode_tok = _ids_encoder(tok)

    @classmethod
    def of(cls, tok: Tokenizer) -> _ByteLevel | None:
        try:
            spec = json.loads(tok.to_str())
        except Exception:
            return None
        pre, model, post = (
            spec.get("pre_tokenizer") or {},
            spec.get("model") or {},
            spec.get("post_processor"),
        )
        if not (
            spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
            and model.get("type") == "BPE"
            and not model.get("dropout")
            and not model.get("byte_fallback")
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
            and (post is None or post.get("type") == "TemplateProcessing")  # others may trim offsets
        ):
            return None
        byte_chars = re.compile(f"[{re.escape(''.join(pre_tokenizers.ByteLevel.alphabet()))}]*")
        vocab = tok.get_vocab(with_added_tokens=True)
        lengths = np.full(max(vocab.values(), default=0) + 1, -1, dtype=np.int64)
        added = {t["id"] for t in spec.get("added_tokens", [])}
        for token, i in vocab.items():
            if i not in added and byte_chars.fullmatch(token):
                lengths[i] = len(token)  # one character of the byte alphabet per byte
        return cls(tok, lengths, TiktokenBPE.of(tok, spec))

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: tiktoken where it is exact (`TiktokenBPE`), the tokenizer elsewhere."""
        if self.tt is None:
            return self._encode_tok(texts)
        out = [self.tt.encode(text) for text in texts]
        rest = [i for i, ids in enumerate(out) if ids is None]
        if rest:
            for i, ids in zip(rest, self._encode_tok([texts[i] for i in rest]), strict=True):
                out[i] = ids
        return out  # type: ignore[return-value]

    def layout(self, text: str, ids: list[int]) -> _Layout | None:
        """Token starts of `text` from its ids, or None when the ids do not spell the text byte for byte."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size == 0 or arr.max() >= len(self.lengths):
            return None
        return self._layout(text, self.lengths[arr])

    def _layout(self, text: str, lens: np.ndarray) -> _Layout | None:
        raw = text.encode("utf-8")
        if lens.min() < 0 or int(lens.sum()) != len(raw):
            return None
        bstart = np.cumsum(lens) - lens
        if len(raw) == len(text):  # ASCII: bytes are characters
            starts, aligned = bstart, None
        else:
            data = np.frombuffer(raw, dtype=np.uint8)
            lead = (data & 0xC0) != 0x80
            starts = (np.cumsum(lead) - 1)[bstart]
            aligned = lead[bstart]
        return _Layout(text, starts.tolist(), aligned)

    def head(self, word: str) -> int:
        n = self.heads.get(word)
        if n is None:
            n = len(self.encode_ids([word])[0])
            if len(self.heads) < 100_000:
                self.heads[word] = n
        return n


class _Layout:
    def __init__(self, text: str, starts: list[int], aligned: np.ndarray | None):
        self.text, self.starts, self.aligned = text, starts, aligned

    def _token_at(self, p: int) -> int | None:
        """Index of the first token starting exactly at character p (on the character's first byte)."""
        if p == len(self.text):
            return len(self.starts)
        i = bisect.bisect_left(self.starts, p)
        if i == len(self.starts) or self.starts[i] != p or (self.aligned is not None and not self.aligned[i]):
            return None
        return i

    def _boundary(self, p: int) -> bool:
        """Whether the whole text's pre-tokenization surely has a boundary at character p."""
        if p == 0 or p == len(self.text):
            return True
        x, y = self.text[p - 1], self.text[p]
        cx, cy = _char_class(x), _char_class(y)
        if _UNSURE in (cx, cy):
            return False
        if cx == _WS:  # whitespace runs split in subtle ways; a single space joins the run after it
            return cy != _WS and x != " "
        if cy == _WS:  # no pre-token continues from a symbol, letter or number into whitespace
            return True
        return _split_between(x, y)

    def count(self, piece: str, a: int, fast: _ByteLevel) -> int | None:
        """Token count of piece.strip() (piece = text[a:a+len(piece)]), or None if it must be re-encoded."""
        text = self.text
        lead = len(piece) - len(piece.lstrip())
        a2, b2 = a + lead, a + len(piece.rstrip())
        if any(c not in _ASCII_WS for c in piece[:lead]) or any(c not in _ASCII_WS for c in piece[b2 - a :]):
            return None  # strip() removed something the pre-tokenizer may not call whitespace
        if not self._boundary(b2):
            return None
        end = self._token_at(b2)
        if end is None:
            return None
        if a2 > 0 and text[a2 - 1] == " ":
            # the whole text's pre-token is " " + run: the chunk starts with the run alone
            if text[a2] == "'" or _char_class(text[a2]) in (_UNSURE, _WS):
                return None
            w = _run_end(text, a2, b2)
            if w >= b2 or not self._boundary(w):
                return None
            first = self._token_at(w)
            return None if first is None else fast.head(text[a2:w]) + end - first
        if not self._boundary(a2):
            return None
        first = self._token_at(a2)
        return None if first is None else end - first
