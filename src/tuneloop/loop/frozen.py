"""The frozen set stays frozen: questions the loop must never train on, and how a question matches one.

The gate scores candidates on `gate.frozen_eval`, and the retrain validates on the loop's own
validation rows; a feedback item whose question is one of those, or a paraphrase of one, would
teach the answer the gate then checks (the scores would measure memorisation) or leak into
model selection. Curation drops every such item as `frozen_overlap`. A question matches when
- its normalised text equals a protected question (case, spacing and punctuation ignored), or
- MinHash Jaccard of character shingles >= `curate.frozen.minhash` (works for Chinese too), or
- content-word Jaccard >= `curate.frozen.words`, or
- embedding cosine >= `curate.frozen.similarity` (English text; MiniLM puts any two Chinese
  sentences close, so CJK text is matched by the others), or
- for Chinese, Jaccard of character bigrams >= `curate.frozen.cjk_bigrams` (a weak matcher: Chinese
  paraphrases share few characters; benchmarks/loop_frozen_overlap.py measures it),
and neither names a product model the other does not (R5 vs R7: tokens with letters and digits),
because "the Arc R5's colour" does not paraphrase "the Arc R7's colour".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tuneloop.data.config import DedupConfig
from tuneloop.data.dedup import MinHasher, normalize
from tuneloop.loop.embed import Embedder
from tuneloop.loop.filters import Reject

_TOKEN = re.compile(r"[^\W_]+")
_ENTITY = re.compile(r"[a-z]*\d[\w.-]*")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "many",
        "much",
        "long",
        "is",
        "of",
        "on",
        "in",
        "to",
        "for",
        "my",
        "i",
        "me",
        "it",
        "its",
        "at",
        "by",
        "with",
        "and",
        "or",
        "this",
        "that",
        "there",
        "their",
        "your",
        "you",
        "from",
        "up",
        "as",
        "if",
        "any",
        "there",
        "please",
        "tell",
    ]
)


def words(text: str) -> set[str]:
    return {w for w in _TOKEN.findall(text.lower()) if w not in _STOP}


def bigrams(text: str) -> set[str]:
    """Character bigrams of the CJK characters and letters/digits (Chinese has no spaces to split on)."""
    chars = "".join(c for c in text.lower() if c.isalnum())
    return {chars[i : i + 2] for i in range(len(chars) - 1)}


def entities(text: str) -> set[str]:
    """Model-like tokens (R7, M2, NL-R5): letters and digits in one token."""
    return {t for t in _ENTITY.findall(text.lower()) if any(c.isalpha() for c in t)}


def is_cjk(text: str) -> bool:
    return sum(1 for c in text if "\u3400" <= c <= "\u9fff") > 0.2 * max(1, len(text))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


@dataclass(frozen=True)
class Protected:
    source: str  # frozen set | validation set (with the file)
    question: str


class FrozenGuard:
    def __init__(
        self,
        items: list[Protected],
        embedder: Embedder | None,
        *,
        minhash: float = 0.7,
        words_jaccard: float = 0.6,
        similarity: float = 0.7,
        cjk_bigrams: float = 0.25,
    ):
        self.items, self.embedder = items, embedder
        self.minhash, self.words, self.similarity, self.cjk = minhash, words_jaccard, similarity, cjk_bigrams
        self.bigram_sets = [bigrams(p.question) if is_cjk(p.question) else set() for p in items]
        self.hasher = MinHasher(DedupConfig(threshold=minhash))
        self.exact = {_key(p.question): i for i, p in enumerate(items)}
        sigs = [self.hasher.signature(p.question) for p in items]
        self.sigs = np.stack(sigs) if sigs else np.zeros((0, self.hasher.k), dtype=np.uint32)
        self.word_sets = [words(p.question) for p in items]
        self.entity_sets = [entities(p.question) for p in items]
        english = [i for i, p in enumerate(items) if not is_cjk(p.question)]
        self.english = np.array(english, dtype=np.int64)
        self.vectors = embedder.encode([items[i].question for i in english]) if embedder and english else None

    def __len__(self) -> int:
        return len(self.items)

    def match(self, question: str) -> tuple[Protected, str, float] | None:
        """(the protected question, how it matched, the similarity) or None."""
        if not self.items:
            return None
        i = self.exact.get(_key(question))
        if i is not None:
            return self.items[i], "exact", 1.0
        ents = entities(question)
        candidates: list[tuple[float, int, str]] = []
        sims = (self.sigs == self.hasher.signature(question)).mean(axis=1)
        candidates += [(float(sims[i]), int(i), "minhash") for i in np.flatnonzero(sims >= self.minhash)]
        mine = words(question)
        candidates += [
            (j, i, "words") for i, w in enumerate(self.word_sets) if (j := jaccard(mine, w)) >= self.words
        ]
        if is_cjk(question):
            mine_bigrams = bigrams(question)
            candidates += [
                (j, i, "bigrams")
                for i, b in enumerate(self.bigram_sets)
                if b and (j := jaccard(mine_bigrams, b)) >= self.cjk
            ]
        if self.vectors is not None and not is_cjk(question):
            cos = self.vectors @ self.embedder.encode([question])[0]  # type: ignore[union-attr]
            candidates += [
                (float(cos[k]), int(self.english[k]), "paraphrase")
                for k in np.flatnonzero(cos >= self.similarity)
            ]
        for score, i, how in sorted(candidates, reverse=True):
            other = self.entity_sets[i]
            if ents and other and not ents & other:
                continue  # about another product model
            return self.items[i], how, score
        return None

    def check(self, question: str) -> Reject | None:
        m = self.match(question)
        if m is None:
            return None
        item, how, score = m
        return Reject(
            "frozen_overlap",
            f"the question matches the {item.source} ({how}, {score:.2f}): {item.question[:120]!r}",
        )


def _key(text: str) -> str:
    return normalize(text).replace(" ", "")
