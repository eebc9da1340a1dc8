"""LLM-as-judge: pairwise comparison of two answers, and checking an answer against known facts.

    with Judge(JudgeConfig(model="smollm2-135m-instruct")) as judge:
        judgments = judge.compare([PairItem(question, candidate_answer, production_answer, reference)])
        rate, low, high, n = win_rate(judgments)          # the candidate's win rate, ties half
        values = paired_values(judgments)                 # +1 / 0 / -1 per item, for a paired test
        verdict = judge.check(question, answer, facts)    # agrees | contradicts | not_addressed | unknown

Every pair is asked in both orders (a shown first, then b shown first) to cancel position bias: the
two verdicts, mapped back to a/b, decide when they agree; otherwise the item is a tie. A reply with
no readable verdict is asked once more for the verdict line alone; still nothing, and that order
counts as a tie with `invalid` set (never a guess). All prompts of a call go to the backend at once
(continuous batching in the engine, concurrent requests upstream); replies are cached and every
prompt and reply is logged (judge_cache.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge_backends import Backend, Completion, Messages, make_backend
from tuneloop.evaluation.judge_cache import (
    AuditLog,
    JudgeCache,
    cache_key,
    default_cache_path,
    default_log_path,
)
from tuneloop.evaluation.judge_config import DEFAULT_RUBRIC, JudgeConfig
from tuneloop.evaluation.judge_prompts import (
    FACT_CHOICES,
    FACT_LABELS,
    PAIR_CHOICES,
    PAIR_LABELS,
    fact_messages,
    pair_messages,
    parse_label,
    prefilled,
    retry_messages,
)
from tuneloop.evaluation.judge_stats import (
    Agreement,
    JudgeSummary,
    PositionBias,
    WinRate,
    agreement,
    paired_values,
    position_bias,
    summarize,
    win_rate,
)

__all__ = [
    "DEFAULT_RUBRIC",
    "Agreement",
    "FactItem",
    "Judge",
    "JudgeConfig",
    "JudgeSummary",
    "Judgment",
    "OrderVerdict",
    "PairItem",
    "PositionBias",
    "Verdict",
    "WinRate",
    "agreement",
    "combine",
    "order_verdict",
    "paired_values",
    "position_bias",
    "summarize",
    "win_rate",
]

# replies begun with "Verdict:" need only the label: " not_addressed" is a few tokens
VERDICT_TOKENS = 8

Side = Literal["a", "b"]
Winner = Literal["a", "b", "tie"]
FactLabel = Literal["agrees", "contradicts", "not_addressed", "unknown"]


def _facts_text(facts: str | Sequence[str] | None) -> str | None:
    if facts is None or isinstance(facts, str):
        return facts
    return "\n".join(f"- {f}" for f in facts)


@dataclass
class PairItem:
    """One question and two answers: `a` (under test, the candidate) against `b` (the baseline)."""

    question: str
    a: str
    b: str
    reference: str | None = None  # a trusted reference answer, if there is one
    facts: str | list[str] | None = None  # known facts the answers should agree with
    id: str | None = None


@dataclass
class OrderVerdict:
    """The judge's verdict with one answer shown first (as "A")."""

    shown_first: Side
    said: str | None  # "A" | "B" | "tie" as the judge wrote it; None: no readable verdict, even retried
    winner: Winner  # mapped back to the item's a / b ("tie" when `said` is None)
    raw: str  # the judge's reply (the retry's when retried)
    retried: bool = False
    cached: bool = False
    error: str | None = None  # no reply at all (prompt too long for the judge, ...)

    @property
    def invalid(self) -> bool:
        return self.said is None


@dataclass
class Judgment:
    id: str | None
    winner: Winner
    orders: list[OrderVerdict]  # [a shown first, b shown first]

    @property
    def value(self) -> int:
        """+1: a wins, -1: b wins, 0: tie."""
        return {"a": 1, "b": -1, "tie": 0}[self.winner]

    @property
    def consistent(self) -> bool:
        """Both orders gave the same winner (a tie included)."""
        return self.orders[0].winner == self.orders[1].winner

    @property
    def invalid(self) -> bool:
        return any(o.invalid for o in self.orders)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "winner": self.winner,
            "value": self.value,
            "consistent": self.consistent,
            "invalid": self.invalid,
            "orders": [asdict(o) for o in self.orders],
        }


@dataclass
class FactItem:
    question: str
    answer: str
    facts: str | list[str]
    id: str | None = None


@dataclass
class Verdict:
    """Does an answer agree with the given facts, contradict them, or not address them? `unknown`:
    the judge gave no readable verdict (even when asked again), or no reply (`error`)."""

    label: FactLabel
    raw: str
    retried: bool = False
    cached: bool = False
    error: str | None = None

    @property
    def invalid(self) -> bool:
        return self.label == "unknown"


@dataclass
class _Asked:
    """One prompt's outcome after the retry: the label read (None: none), the reply, how it went."""

    label: str | None
    raw: str
    retried: bool
    cached: bool
    error: str | None


@dataclass
class Usage:
    prompts: int = 0  # prompts answered (retries included)
    cached: int = 0  # of them, from the cache
    generated: int = 0  # of them, by the backend
    prompt_tokens: int = 0  # of the generated ones
    completion_tokens: int = 0
    seconds: float = 0.0  # in the backend

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Judge:
    """`Judge(config)` loads the judge (or connects to it); `close()` (or a `with` block) frees the
    model and the files. `backend` replaces the one the config describes (any `Backend`; e.g. another
    judge's, to share a loaded model), and stays open."""

    def __init__(self, config: JudgeConfig, backend: Backend | None = None):
        self.config = config
        self.usage = Usage()
        # the files first: a bad path fails in a second, before a model loads
        self.cache = JudgeCache(config.cache or default_cache_path()) if config.use_cache else None
        self.log = AuditLog(config.log or default_log_path())
        self._owns_backend = backend is None  # one given is the giver's to close
        try:
            self.backend: Backend = backend or make_backend(config)
        except BaseException:
            self._close_files()
            raise

    @property
    def identity(self) -> str:
        return self.backend.identity

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()
        self._close_files()

    def _close_files(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.log.close()

    # ------------------------------------------------------------ pairwise

    def compare(self, items: Sequence[PairItem]) -> list[Judgment]:
        """Each item judged in both orders; see the module docstring for how they combine."""
        rubric, reasons = self.config.rubric, self.config.reasons
        prompts, meta = [], []
        for i, it in enumerate(items):
            facts = _facts_text(it.facts)
            for first in ("a", "b"):
                shown = (it.a, it.b) if first == "a" else (it.b, it.a)
                prompts.append(pair_messages(rubric, it.question, *shown, it.reference, facts, reasons))
                meta.append({"task": "compare", "id": it.id, "item": i, "shown_first": first})
        asked = self._ask(prompts, meta, PAIR_LABELS, PAIR_CHOICES)
        return [
            combine(it.id, _order("a", asked[2 * i]), _order("b", asked[2 * i + 1]))
            for i, it in enumerate(items)
        ]

    # ------------------------------------------------------------ against known facts

    def check(self, question: str, answer: str, facts: str | Sequence[str]) -> Verdict:
        """Does `answer` agree with, contradict, or not address `facts`?"""
        return self.check_many(
            [FactItem(question, answer, list(facts) if not isinstance(facts, str) else facts)]
        )[0]

    def check_many(self, items: Sequence[FactItem]) -> list[Verdict]:
        """`check` for many answers in one batch."""
        for it in items:
            if not (_facts_text(it.facts) or "").strip():
                raise TuneloopError(
                    f"judge check{f' of {it.id!r}' if it.id else ''}: no facts to check the answer against",
                    hint="pass the known facts (a string or a list of strings)",
                )
        reasons = self.config.reasons
        prompts = [
            fact_messages(it.question, it.answer, _facts_text(it.facts) or "", reasons) for it in items
        ]
        meta = [{"task": "check", "id": it.id, "item": i} for i, it in enumerate(items)]
        asked = self._ask(prompts, meta, FACT_LABELS, FACT_CHOICES)
        return [Verdict(a.label or "unknown", a.raw, a.retried, a.cached, a.error) for a in asked]  # type: ignore[arg-type]

    # ------------------------------------------------------------ asking, with one retry

    def _ask(
        self, prompts: list[Messages], meta: list[dict[str, Any]], labels: dict[str, str], choices: str
    ) -> list[_Asked]:
        c, begins = self.config, self.backend.continues_reply
        if begins and not c.reasons:  # the verdict alone: begin the reply with "Verdict:" for it
            first = self._complete([prefilled(p) for p in prompts], meta, 1, labels, VERDICT_TOKENS)
        else:
            first = self._complete(prompts, meta, 1, labels, c.max_tokens)
        out = [_Asked(label, text, False, cached, r.error) for r, cached, label, text in first]
        again = [i for i, a in enumerate(out) if a.label is None]
        if not again:
            return out
        # one more chance, never the same prompt again: after its reasons, "Verdict:" begun for it;
        # else the reply shown back with a request for the verdict line alone (begun too, if possible)
        if begins and c.reasons:
            retry, budget = [prefilled(prompts[i], out[i].raw) for i in again], VERDICT_TOKENS
        elif begins:
            retry = [prefilled(retry_messages(prompts[i], out[i].raw, choices)) for i in again]
            budget = VERDICT_TOKENS
        else:
            retry, budget = [retry_messages(prompts[i], out[i].raw, choices) for i in again], c.max_tokens
        second = self._complete(retry, [meta[i] for i in again], 2, labels, budget)
        for i, (r, cached, label, text) in zip(again, second, strict=True):
            out[i] = _Asked(label, text, True, cached and out[i].cached, r.error or out[i].error)
        return out

    def _complete(
        self,
        prompts: list[Messages],
        meta: list[dict[str, Any]],
        attempt: int,
        labels: dict[str, str],
        budget: int,
    ) -> list[tuple[Completion, bool, str | None, str]]:
        """Replies (from the cache where it has them), each with `cached`, the label read from it and
        the judge's whole turn (a begun reply included); every prompt and reply goes to the audit log."""
        c = self.config
        keys = [cache_key(self.identity, p, budget, c.temperature) for p in prompts]
        hits = self.cache.get_many(keys) if self.cache else {}
        # each distinct prompt once (a pair asked twice in one call is generated once)
        todo: dict[str, int] = {}  # key -> the first prompt with it
        for i, k in enumerate(keys):
            if k not in hits:
                todo.setdefault(k, i)
        fresh: dict[str, Completion] = {}
        if todo:
            started = time.perf_counter()
            replies = self.backend.complete([prompts[i] for i in todo.values()], budget, c.temperature)
            self.usage.seconds += time.perf_counter() - started
            fresh = dict(zip(todo, replies, strict=True))
            if self.cache:
                self.cache.put_many(self.identity, list(fresh.items()))
        results, records = [], []
        for i, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
            reply = hits[key] if key in hits else fresh[key]
            cached = key in hits or todo[key] != i  # answered without generating it for this prompt
            begun = prompt[-1]["content"] if prompt[-1]["role"] == "assistant" else ""
            text = begun + reply.text if begun else reply.text
            label = parse_label(text, labels) if reply.error is None else None
            results.append((reply, cached, label, text))
            records.append(
                {
                    "judge": self.identity,
                    "key": key,
                    **meta[i],
                    "attempt": attempt,
                    "messages": prompt,
                    "reply": reply.text,
                    "parsed": label,
                    "cached": cached,
                    "max_tokens": budget,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "error": reply.error,
                }
            )
        self.log.write(records)
        self._count([(r, cached) for r, cached, _, _ in results])
        fatal = next((r.error for r, _, _, _ in results if r.fatal), None)
        if fatal:
            raise TuneloopError(fatal, hint="replies received so far are cached: running again resumes")
        return results

    def _count(self, results: list[tuple[Completion, bool]]) -> None:
        u = self.usage
        for reply, cached in results:
            u.prompts += 1
            if cached:
                u.cached += 1
            else:
                u.generated += 1
                u.prompt_tokens += reply.prompt_tokens
                u.completion_tokens += reply.completion_tokens


def order_verdict(shown_first: Side, said: str | None, raw: str = "", **flags: Any) -> OrderVerdict:
    """A single-order verdict ("A" / "B" / "tie" / None) mapped back to the item's answers."""
    other: Side = "b" if shown_first == "a" else "a"
    winner: Winner = {"A": shown_first, "B": other}.get(said or "", "tie")  # type: ignore[assignment]
    return OrderVerdict(shown_first, said, winner, raw, **flags)


def combine(item_id: str | None, a_first: OrderVerdict, b_first: OrderVerdict) -> Judgment:
    """Both orders name the same winner: that one; anything else (a disagreement, a tie, an
    unreadable order) is a tie. A judge that always picks the first answer shown never decides."""
    winner = a_first.winner if a_first.winner == b_first.winner else "tie"
    return Judgment(item_id, winner, [a_first, b_first])


def _order(shown_first: Side, asked: _Asked) -> OrderVerdict:
    return order_verdict(
        shown_first, asked.label, asked.raw, retried=asked.retried, cached=asked.cached, error=asked.error
    )
