"""Known facts: what the training data, the frozen set and the source documents say, and whether a
rated answer contradicts it.

A rated-up answer or a correction is checked the same way. Its *slots* are read: typed values
with what they measure (`port 2222`, `12 seconds`, `176 devices`, `$329`, `username owner`,
`password 1234`, an IP, a phone number, an email). Known statements are the answers of the
training data and the frozen set (each with its question) and the sentences of the documents in
`curate.knowledge`. A statement is *relevant* to a question when its question is a paraphrase
(QA rows: embedding cosine, word overlap) or, for a document sentence, when it shares a topic
word with the question (a word that is not a stopword and not in most statements) — and it names
no other product model (R5 vs R7). For each slot of the answer: if relevant statements state the
same kind of value and none of them states the answer's value, the answer contradicts them:
"SSH runs on port 23" against "SSH listens on port 2222". One relevant statement that agrees is
enough (answers about the Sync button's 3 seconds are not refuted by the Reset button's 12).

The same statements give the gate its references (`support`): a held-out example is scored
against the known statement that supports it, never against the rater's own words. And they give
redaction its keep-list (`keep`): values that the knowledge base itself states (the training data
or the frozen set, or at least two documents) are facts, not someone's personal data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data.pii import find_pii
from tuneloop.errors import TuneloopError
from tuneloop.loop.embed import Embedder
from tuneloop.loop.frozen import entities, is_cjk, jaccard, words

DOC_SUFFIXES = (".md", ".markdown", ".txt", ".rst", ".html", ".htm", ".csv", ".jsonl", ".json")

_NUM = r"(\d+(?:[.,]\d+)?)"
_UNITS = {
    "seconds": r"seconds?|secs?|(?<=\s)s\b|秒(?:钟)?",
    "minutes": r"minutes?|mins?\b|分钟",
    "hours": r"hours?|hrs?\b|小时",
    "days": r"days?\b|天",
    "weeks": r"weeks?\b|周|星期",
    "months": r"months?\b|个月",
    "years": r"years?\b|年",
    "devices": r"(?:connected\s+)?(?:devices|clients)|台设备|个设备|台终端",
    "nodes": r"nodes?\b|个节点",
    "profiles": r"profiles?\b",
    "percent": r"%|percent\b",
    "meters": r"m\b|meters?\b|metres?\b|米",
    "watts": r"W\b|watts?\b",
    "gbe": r"GbE\b",
    "ghz": r"GHz\b",
    "cny": r"元|RMB\b|CNY\b",
    "usd": r"USD\b|dollars?\b",
    "eur": r"EUR\b|euros?\b",
}
_UNIT_SLOTS = [(k, re.compile(rf"(?<![\w.]){_NUM}\s*-?\s*(?:{u})", re.IGNORECASE)) for k, u in _UNITS.items()]
_PREFIX_SLOTS = [
    ("usd", re.compile(r"(?:\$|USD\s?|US\$)\s?" + _NUM, re.IGNORECASE)),
    ("cny", re.compile(r"(?:¥|￥|RMB\s?|CNY\s?)\s?" + _NUM, re.IGNORECASE)),
    ("eur", re.compile(r"(?:€|EUR\s?)\s?" + _NUM, re.IGNORECASE)),
    (
        "port",
        re.compile(
            r"(?:\bport|端口)\s*(?:number\s*|号\s*)?(?:is\s*|of\s*|为\s*|是\s*)?:?\s*(\d{1,5})\b",
            re.IGNORECASE,
        ),
    ),
    ("ip", re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")),
    (
        "phone",
        re.compile(
            r"(?<![\d-])(\+?\d{1,4}[ -]\d{2,4}[ -]\d{3,4}(?:[ -]\d{2,4})?|\d{3,4}-\d{3,4}-\d{4})(?![\d-])"
        ),
    ),
    ("email", re.compile(r"\b([\w.+-]+@[\w-]+(?:\.[\w-]+)+)\b")),
]
# credentials: the value must look like one (a quoted word, or a word with a digit or a known name)
_USER = re.compile(
    r"(?:user\s?name|\buser\b|\blog(?:\s|-)?in(?:\s+name)?|sign(?:\s|-)?in|account)\s*(?:is|:|=|as|with(?: the)?(?: username)?|名(?:是|为)?)?"
    r"\s*[`'\"*]*([A-Za-z][\w.-]{1,31})[`'\"*]*|用户名\s*(?:是|为|：|:)?\s*[`'\"*]*([A-Za-z][\w.-]{1,31})",
    re.IGNORECASE,
)
_PASSWORD = re.compile(
    r"(?:password|passcode|pass\s?word|密码)\s*(?:is|:|=|of|为|是|：)?\s*[`'\"*]*([^\s`'\"*,.;，。]{3,64})",
    re.IGNORECASE,
)
_NOT_VALUE_WORDS = (
    "the a an your their this that it is on of in to with and or for printed shown written from which who you "
    "default admin administrator page app label new old same once first login log then must be will can uses "
    "used use using account name details screen password credentials button via"
)
_NOT_VALUES = frozenset(_NOT_VALUE_WORDS.split())
_SENTENCE = re.compile(r"(?<=[.!?。！？;；])\s+|\n+")
_MARKUP = re.compile(r"[*_`#>|]+|<[^>]{0,200}>")
# a heading (markdown, HTML) or a FAQ's question line ("**How many devices can the Arc R7 handle?**"):
# the context of the sentences under it
_HEADING = re.compile(
    r"^\s*(?:(#{1,6})\s+(.+)|<(h[1-6]|title)\b[^>]*>(.+?)</(?:h[1-6]|title)>|\*\*([^*]+\?)\*\*\s*$"
    r"|<dt>(.+?)</dt>)",
    re.IGNORECASE,
)
_HTML_DROP = re.compile(r"<(script|style|nav|footer|header)\b.*?</\1>", re.IGNORECASE | re.DOTALL)


def slots(text: str) -> dict[str, set[str]]:
    """Typed values in `text`, by what they measure: {"port": {"2222"}, "seconds": {"12"}, ...}."""
    found: dict[str, set[str]] = {}
    plain = _MARKUP.sub(" ", text)
    for key, pattern in (*_PREFIX_SLOTS, *_UNIT_SLOTS):
        for m in pattern.finditer(plain):
            found.setdefault(key, set()).add(_value(key, m.group(1)))
    for m in _USER.finditer(plain):
        v = (m.group(1) or m.group(2) or "").lower().rstrip(".-")
        if v and v not in _NOT_VALUES and not v.startswith("pass"):
            found.setdefault("username", set()).add(v)
    for m in _PASSWORD.finditer(plain):
        v = m.group(1)
        if v.lower() not in _NOT_VALUES and (any(c.isdigit() for c in v) or not v.isalpha()):
            found.setdefault("password", set()).add(v)
    return found


def _value(key: str, raw: str) -> str:
    if key in ("ip", "email"):
        return raw.lower()
    if key == "phone":
        return re.sub(r"\D", "", raw)
    try:
        return f"{float(raw.replace(',', '')):g}"
    except ValueError:
        return raw.lower()


@dataclass(frozen=True)
class Statement:
    text: str
    source: str  # training data | frozen set | documents
    ref: str  # file:line, or a row id
    question: str | None = None  # QA rows
    heading: str = ""  # documents: the section heading above it ("Nimbus Arc R7 — Setup Guide")

    def cite(self) -> str:
        return f"{self.source} ({self.ref}): {self.text[:160]!r}"


@dataclass(frozen=True)
class Contradiction:
    slot: str
    said: set[str]
    known: Statement
    known_values: set[str]

    @property
    def reason(self) -> str:
        return {
            "training data": "conflicts_with_training_data",
            "frozen set": "conflicts_with_frozen_set",
            "documents": "conflicts_with_documents",
        }[self.known.source]

    @property
    def detail(self) -> str:
        said = ", ".join(sorted(self.said))
        known = ", ".join(sorted(self.known_values))
        return f"says {self.slot} {said}; the {self.known.cite()} says {self.slot} {known}"


@dataclass
class Knowledge:
    statements: list[Statement]
    embedder: Embedder | None = None
    qa_similarity: float = 0.7
    _slots: list[dict[str, set[str]]] = field(default_factory=list)
    _words: list[set[str]] = field(default_factory=list)
    _common: frozenset[str] = frozenset()
    _products: frozenset[str] = frozenset()
    _named: list[set[str]] = field(default_factory=list)  # the models each statement itself names
    _q_index: np.ndarray | None = None
    _q_vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._slots = [slots(s.text) for s in self.statements]
        self._words = [words(s.text) for s in self.statements]
        df = Counter(w for ws in self._words for w in ws)
        # words in more than 15% of the statements say nothing about which fact is meant
        self._common = frozenset(w for w, n in df.items() if n > max(3, 0.15 * len(self.statements)))
        # product models are what questions ask about ("Arc R7"); a cable's "Cat6a" in a spec line is not
        self._products = frozenset(e for s in self.statements if s.question for e in entities(s.question))
        self._named = [self._models(s.question or s.text) for s in self.statements]
        qa = [i for i, s in enumerate(self.statements) if s.question and not is_cjk(s.question)]
        if self.embedder is not None and qa:
            self._q_index = np.array(qa, dtype=np.int64)
            self._q_vectors = self.embedder.encode([self.statements[i].question or "" for i in qa])

    # ---------------------------------------------------------------------------- relevance

    def relevant(self, question: str) -> list[int]:
        """Indices of statements about what `question` asks (see the module docstring)."""
        q_words = words(question) - self._common
        q_ents = self._models(question)
        found: dict[int, None] = {}
        if self._q_vectors is not None and not is_cjk(question):
            cos = self._q_vectors @ self.embedder.encode([question])[0]  # type: ignore[union-attr]
            found.update((int(self._q_index[k]), None) for k in np.flatnonzero(cos >= self.qa_similarity))  # type: ignore[index]
        for i, s in enumerate(self.statements):
            if s.question is not None:
                if jaccard(words(question), words(s.question)) >= 0.5:
                    found[i] = None
            elif q_words & self._words[i]:
                found[i] = None
        keep = []
        for i in found:
            s = self.statements[i]
            # a sentence that names no model ("It ships in Slate Blue") is about its section's model
            other = self._named[i] or self._models(s.heading)
            if q_ents and other and not q_ents & other:
                continue  # about another product model
            keep.append(i)
        return keep

    def _models(self, text: str) -> set[str]:
        """The product models `text` names (all model-like tokens when no question names any)."""
        found = entities(text)
        return found & self._products if self._products else found

    # ---------------------------------------------------------------------------- checks

    def contradiction(self, question: str, answer: str) -> Contradiction | None:
        said = slots(answer)
        if not said:
            return None
        related = self.relevant(question)
        for key, values in said.items():
            stating = [i for i in related if key in self._slots[i]]
            # a QA row that answers the same question says more than any sentence of a document
            stating = [i for i in stating if self.statements[i].question is not None] or stating
            # a sentence about several models cannot say which value is whose ("the R7 supports up to 176
            # connected devices, and the R5 up to 96" reads as devices=176): it refutes nothing
            stating = [i for i in stating if len(self._named[i]) < 2]
            if not stating or any(values & self._slots[i][key] for i in stating):
                continue
            best = max(
                stating,
                key=lambda i: (
                    self.statements[i].source != "documents",
                    len(self._words[i] & words(question)),
                ),
            )
            return Contradiction(key, values, self.statements[best], self._slots[best][key])
        return None

    def support(self, question: str, answer: str) -> tuple[Statement, str | None] | None:
        """A known statement that says what `answer` says: (statement, the shared value or None).

        By a shared slot value (the value is then the short answer a metric can look for), or by
        the answer's own words (those not in the question): most of them in a relevant statement.
        """
        related = self.relevant(question)
        said = slots(answer)
        for i in sorted(related, key=lambda i: self.statements[i].source == "documents"):
            for key, values in said.items():
                shared = values & self._slots[i].get(key, set())
                if shared:
                    return self.statements[i], _surface(self.statements[i].text, key, shared)
        new = words(answer) - words(question) - self._common
        if not new:
            return None
        for i in related:
            if len(new & self._words[i]) >= max(1, 0.6 * len(new)):
                return self.statements[i], None
        return None

    def texts_for(self, question: str, limit: int = 8) -> list[str]:
        """The relevant statements as plain text (the facts handed to an LLM judge)."""
        return [self.statements[i].text for i in self.relevant(question)[:limit]]

    def keep(self) -> frozenset[str]:
        """PII-shaped values the knowledge base states: in the training data or the frozen set, or in
        at least two documents (a value in one document only may be a person's, e.g. a support chat)."""
        trusted: set[str] = set()
        docs: dict[str, set[str]] = {}
        for s in self.statements:
            for _, value in find_pii(s.text):
                if s.source == "documents":
                    docs.setdefault(value, set()).add(s.ref.rsplit(":", 1)[0])
                else:
                    trusted.add(value)
        return frozenset(trusted | {v for v, files in docs.items() if len(files) >= 2})


def _surface(text: str, key: str, values: set[str]) -> str | None:
    """How a shared value is written in the statement ("176", "12 seconds"), for contains_answer."""
    for k, pattern in (*_PREFIX_SLOTS, *_UNIT_SLOTS):
        if k != key:
            continue
        for m in pattern.finditer(_MARKUP.sub(" ", text)):
            if _value(key, m.group(1)) in values:
                return m.group(1)
    return None


# -------------------------------------------------------------------------------- loading


def qa_statements(rows: list[dict[str, Any]], source: str, where: str) -> list[Statement]:
    out = []
    for n, row in enumerate(rows, 1):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            continue
        question = next((m.get("content", "") for m in reversed(msgs[:-1]) if m.get("role") == "user"), None)
        out.append(
            Statement(
                str(msgs[-1].get("content", "")), source, str(row.get("id") or f"{where}:{n}"), question
            )
        )
    return out


def document_statements(paths: list[str]) -> list[Statement]:
    """Sentences of the files (and of the files under the folders) in `curate.knowledge`."""
    out: list[Statement] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise TuneloopError(
                f"curate.knowledge '{raw}' does not exist",
                hint="list documents or folders of documents the model should agree with",
            )
        files = (
            sorted(p for p in root.rglob("*") if p.suffix.lower() in DOC_SUFFIXES)
            if root.is_dir()
            else [root]
        )
        for path in files:
            out += [Statement(s, "documents", f"{path}:{line}", heading=h) for line, s, h in _sentences(path)]
    return out


def _sentences(path: Path) -> list[tuple[int, str, str]]:
    """(line, sentence, the nearest heading above it) of one document."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise TuneloopError(f"curate.knowledge: cannot read '{path}': {e}") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            for m in row.get("messages", []) if isinstance(row, dict) else []:
                if m.get("role") == "assistant":  # what support said, not what customers wrote
                    lines.append((n, str(m.get("content", ""))))
        return [(n, s, "") for n, t in lines for s in _split(t)]
    if suffix in (".html", ".htm"):
        text = _HTML_DROP.sub(" ", text)
    out, sections = [], {}  # heading level -> its text: the title and the sections above a line
    for n, line in enumerate(text.splitlines(), 1):
        if (h := _HEADING.match(line)) is not None:
            tag = (h.group(3) or "").lower()
            if h.group(5) or h.group(6):  # a question: below every heading
                level = 7
            else:
                level = len(h.group(1)) if h.group(1) else (int(tag[1]) if tag.startswith("h") else 1)
            title = h.group(2) or h.group(4) or h.group(5) or h.group(6)
            sections = {k: v for k, v in sections.items() if k < level}
            sections[level] = " ".join(_MARKUP.sub(" ", title).split())
        out += [(n, s, " / ".join(sections.values())) for s in _split(line)]
    return out


def _split(text: str) -> list[str]:
    plain = " ".join(_MARKUP.sub(" ", text).split())
    return [s.strip() for s in _SENTENCE.split(plain) if len(s.strip()) > 8]
