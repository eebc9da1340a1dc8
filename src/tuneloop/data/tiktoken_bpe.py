"""Exact token ids of a byte-level BPE tokenizer (GPT-2 pre-tokenizer) through tiktoken, 3-7x faster.

`tokenizers` applies, inside each pre-token, the lowest-ranked pair *listed in the merges*; tiktoken
joins the adjacent pair whose concatenation has the lowest rank (its rank is the token id). They
give the same ids when, as `TiktokenBPE.of` checks once per tokenizer:
1. merges make tokens in id order, one merge per token (so "lowest merge" is "lowest id"), and
2. every token handed to tiktoken is what the tokenizer's own BPE makes of that token's bytes.
Why 2 suffices: both run in lockstep until tiktoken would join adjacent x, y into t = x + y where
(x, y) is no listed merge. No join so far crossed the edges of x + y, so BPE of t's bytes alone took
the same steps and stopped at [x, y] (its only pair is no merge): against 2. A token failing 2 never
appears in the tokenizer's BPE at all (same argument), so it is left out of tiktoken's ranks.
tiktoken returns a whole pre-token found in its ranks at once: by 2, the same answer.

The pre-tokenizer is the same regex in two engines (Oniguruma in `tokenizers`, Rust's regex in
tiktoken) with their own Unicode tables. The regex depends on a character only through its class
(letter, number, whitespace, other), so each character met is classified by both engines once
(`_Probe`) and a text with a character they disagree on, or with a byte missing from the vocabulary
(the tokenizer drops such bytes), is left to the tokenizer: `encode` returns None. Added tokens
(`<|im_start|>`) are cut out first, as the tokenizer does, when their options allow.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, models, pre_tokenizers

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger("tuneloop.data")

# the GPT-2 pre-tokenizer's regex, as `tokenizers`' ByteLevel(use_regex=True) spells it
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TiktokenBPE:
    """tiktoken holding a byte-level BPE tokenizer's ranks: the tokenizer's exact ids, or None."""

    def __init__(self, encoding: tiktoken.Encoding, added: dict[str, int], normalized: set[str]):
        self._encode = encoding.encode_ordinary
        self._probe = _Probe(set(encoding._mergeable_ranks))
        self.added = added  # added token text -> id; cut out before pre-tokenization
        # the tokenizer cuts out tokens with normalized=False first, then the others (leftmost-longest)
        passes = [[a for a in added if a not in normalized], [a for a in added if a in normalized]]
        self._cuts = [_longest_first(p) for p in passes if p]
        self._first = "".join({a[0] for a in added})

    @classmethod
    def of(cls, tok: Tokenizer, spec: dict[str, Any] | None = None) -> TiktokenBPE | None:
        """The encoder for `tok` (a GPT-2-style byte-level BPE `tokenizers.Tokenizer`), or None (logged why)."""
        try:
            import tiktoken
        except ImportError:
            log.info("tiktoken is not installed: tokenizing with `tokenizers` (pip install 'tuneloop[data]')")
            return None
        spec = json.loads(tok.to_str()) if spec is None else spec
        pre = spec.get("pre_tokenizer") or {}
        if spec.get("normalizer") or not (
            pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
        ):
            log.info("tokenizing with `tokenizers`, not tiktoken: not the GPT-2 byte-level pre-tokenizer")
            return None
        reason, ranks = _ranks(tok, spec)
        added, normalized = _added(tok, spec)
        if ranks is None or added is None:
            log.info("tokenizing with `tokenizers`, not tiktoken: %s", reason or "added tokens with options")
            return None
        enc = tiktoken.Encoding(
            "tuneloop-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        bpe = cls(enc, added, normalized)
        for text in _PROBES:
            ids = bpe.encode(text)
            if ids is not None and ids != tok.encode(text, add_special_tokens=False).ids:
                log.warning("tiktoken disagrees with the tokenizer on %r: tokenizing with `tokenizers`", text)
                return None
        log.info("tokenizing with tiktoken: exact ids of the tokenizer (%d of its tokens)", len(ranks))
        return bpe

    def encode(self, text: str) -> list[int] | None:
        """The tokenizer's ids for `text` (special tokens split, none added), or None where tiktoken can't say."""
        if not self._probe.agree(text):
            return None
        if not self._cuts or not any(c in text for c in self._first):
            return self._encode(text)
        out: list[int] = []
        for piece, is_added in self._split(text, 0):
            out += [self.added[piece]] if is_added else self._encode(piece)
        return out

    def _split(self, text: str, depth: int) -> list[tuple[str, bool]]:
        """text as (piece, is added token) in order, cut like the tokenizer's AddedVocabulary."""
        if depth == len(self._cuts):
            return [(text, False)] if text else []
        out: list[tuple[str, bool]] = []
        pos = 0
        for m in self._cuts[depth].finditer(text):
            out += self._split(text[pos : m.start()], depth + 1)
            out.append((m.group(), True))
            pos = m.end()
        return out + self._split(text[pos:], depth + 1)


def _longest_first(tokens: list[str]) -> re.Pattern[str]:
    # Python's alternation takes the first alternative that matches: longest first is leftmost-longest
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


_PROBES = (
    "Hello world! It's a test: don't, we're, I'll, they've, she'd, 'S.\n\n  Indented\tcode();  \n",
    "def f(x):\n    return x ** 2  # comment\n\n\n    \n",
    "3.14159 2024-01-01 1,000,000 v1.2.3 0x1F e+10 100% x² ½ Ⅻ",
    "数据模型训练，你好北京。「引号」（括号）！？ 한국어 カタカナ ß naïve Ω ж 😀 👍🏽\u3000\xa0x",
    "   leading and trailing   ",
    "std::vector<int> a::b https://example.com/path?q=1&r=2#frag",
)


class _Probe:
    """Which characters tiktoken's regex classifies as the tokenizer's does (each checked once, cached).

    The GPT-2 regex sees a character only as a letter, a number, whitespace or other. Two tiny
    byte-level BPEs with the same ranks, one in each library, merge "a", "1" and "!" with the first
    byte of whatever follows: "a{c}\\n1{c}\\n!{c}\\n" shows which of the three joins c in a pre-token
    (none: whitespace). A character whose bytes are not all in the vocabulary also fails.
    """

    def __init__(self, vocab_bytes: set[bytes]):
        self.vocab = vocab_bytes
        self.good: set[str] = set()
        self.bad: set[str] = set()
        self.engines: tuple[Tokenizer, tiktoken.Encoding] | None = None
        ascii_bad = [c for c in map(chr, range(128)) if not self._check([c])[0]]
        self.bad.update(ascii_bad)
        self.good.update(c for c in map(chr, range(128)) if c not in self.bad)
        self.ascii_bad = "".join(ascii_bad).encode("ascii")

    def agree(self, text: str) -> bool:
        if text.isascii():
            return not self.ascii_bad or len(text.encode("ascii").translate(None, self.ascii_bad)) == len(
                text
            )
        chars = set(text)
        new = chars - self.good
        if not new:
            return True
        if not new <= self.bad:
            unseen = list(new - self.bad)
            for c, ok in zip(unseen, self._check(unseen), strict=True):
                (self.good if ok else self.bad).add(c)
        return chars.isdisjoint(self.bad)

    def _check(self, chars: list[str]) -> list[bool]:
        hf, tt = self._engines()
        out = []
        for c in chars:
            try:
                raw = c.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: the tokenizer decides what happens
                out.append(False)
                continue
            if any(bytes([b]) not in self.vocab for b in raw):
                out.append(False)
                continue
            probe = f"a{c}\n1{c}\n!{c}\n"
            out.append(hf.encode(probe, add_special_tokens=False).ids == tt.encode_ordinary(probe))
        return out

    def _engines(self) -> tuple[Tokenizer, tiktoken.Encoding]:
        if self.engines is None:
            import tiktoken

            byte_char = {ord(v): chr(k) for k, v in _byte_table().items() if v != "\uffff"}
            ranks = {bytes([b]): b for b in range(256)}
            vocab = {byte_char[b]: b for b in range(256)}
            merges = []
            for ctx, nxt in itertools.product(b"a1!", [*range(128), *range(0xC2, 0xF5)]):
                ranks[bytes([ctx, nxt])] = vocab[byte_char[ctx] + byte_char[nxt]] = len(ranks)
                merges.append((byte_char[ctx], byte_char[nxt]))
            hf = Tokenizer(models.BPE(vocab, merges))
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            tt = tiktoken.Encoding(
                "tuneloop-probe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
            )
            self.engines = (hf, tt)
        return self.engines


def _byte_table() -> dict[int, str]:
    """str.translate table from GPT-2's byte alphabet (the characters `tokenizers` stores tokens in) to
    latin-1 characters of the same byte value; other characters below 256 map to one latin-1 lacks."""
    # GPT-2 maps printable bytes to themselves and the others, in order, to chr(256 + n)
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b], n = chr(256 + n), n + 1
    table = {c: "\uffff" for c in range(256)}
    table.update({ord(c): chr(b) for b, c in chars.items()})
    return table


def _ranks(tok: Tokenizer, spec: dict[str, Any]) -> tuple[str, dict[bytes, int] | None]:
    """tiktoken's ranks for the tokenizer, or (why not, None): the conditions of the module docstring."""
    model = spec.get("model") or {}
    flags = ("ignore_merges", "dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")
    if model.get("type") != "BPE" or any(model.get(k) for k in flags):
        return "not a plain merges-driven BPE model", None
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    made = [vocab.get(a + b) for a, b in merges]
    if None in made or any(x >= y for x, y in itertools.pairwise(made)):  # type: ignore[operator]
        return "merges do not make their tokens in id order", None
    table = _byte_table()
    if {chr(k) for k, v in table.items() if v != "\uffff"} != set(pre_tokenizers.ByteLevel.alphabet()):
        return "this version of `tokenizers` has another byte alphabet", None
    made_set = set(made)
    added = {t["id"] for t in spec.get("added_tokens", [])}
    tokenize = tok.model.tokenize
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        if i in added:
            continue
        try:
            raw = token.translate(table).encode("latin-1")
        except UnicodeEncodeError:  # not a byte-level token: the tokenizer's BPE never makes it
            continue
        # condition 2 (a 2-byte token made by a merge passes it: its merge is its only split)
        if len(raw) > 2 or (len(raw) == 2 and i not in made_set):
            found = tokenize(token)
            if len(found) != 1 or found[0].id != i:
                continue
        ranks[raw] = i
    return "", ranks


def _added(tok: Tokenizer, spec: dict[str, Any]) -> tuple[dict[str, int] | None, set[str]]:
    """Added tokens (text -> id) and those matched after normalization, or None if their options
    (lstrip, rstrip, single_word, encode_special_tokens) change how the tokenizer cuts them."""
    tokens = spec.get("added_tokens") or []
    if getattr(tok, "encode_special_tokens", False) or any(
        t.get(k) for t in tokens for k in ("lstrip", "rstrip", "single_word")
    ):
        return None, set()
    return {t["content"]: t["id"] for t in tokens if t["content"]}, {
        t["content"] for t in tokens if t.get("normalized") and t["content"]
    }
