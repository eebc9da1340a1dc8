"""Curate: rated answers -> proposals -> (approval) -> SFT examples, DPO pairs and KTO rows, with a manifest.

Per answer: it must have succeeded and be text; the raters must agree (filters.agree); prompt,
answer, correction and comment pass the injection, abuse and size filters; PII is redacted (or the
answer dropped, values the knowledge base states kept); an upvoted answer or a correction must not
contradict known facts (training data, frozen set, documents: facts.py); an item whose question is
a frozen-set or validation question, or a paraphrase of one, is dropped (frozen.py); an example that
is already in the training data (exact or near duplicate) or twice in this batch is dropped. Then:

- a correction gives an SFT example (prompt -> correction) and a DPO pair (correction over answer);
- an upvoted answer gives an SFT example, and a DPO pair over any downvoted answer to the same prompt;
- a downvoted answer without a correction is the loser of such a pair, or else a `downvoted` proposal;
- thumbs alone (upvoted and downvoted answers, not corrections) also give KTO rows (loop/kto.py).

Tool use survives curation (loop/tool_answers.py): the request's tools, the prompt's tool calls and
tool results, and an answer that calls tools are written back as they were; a correction of a
tool-call answer must be tool calls to the request's tools (else `correction_not_a_tool_call`), and a
row that would not pass the training row check is dropped as `invalid_tool_row`.

Every rejection is counted with its reason, and every example is linked to its request id and to
the API key whose ratings brought it. No key brings more than `curate.max_per_key` of a batch: the
surplus (its newest proposals) is rejected as `per_key_cap`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.data.config import DedupConfig
from tuneloop.data.dedup import MinHasher, normalize
from tuneloop.data.manifest import fingerprint
from tuneloop.data.pii import find_spans
from tuneloop.data.tool_rows import ToolRowError
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge import FactItem
from tuneloop.evaluation.metrics import token_f1, tokenize
from tuneloop.interactions.privacy import placeholders
from tuneloop.interactions.records import Interaction, Rating
from tuneloop.loop.collect import Batch
from tuneloop.loop.config import CurateSettings
from tuneloop.loop.filters import Reject, TextFilters, Verdict, agree
from tuneloop.loop.kto import counts as kto_counts
from tuneloop.loop.kto import downvote_problem, kto_rows
from tuneloop.loop.tool_answers import (
    CORRECTION_HINT,
    assistant_message,
    calls_text,
    check_conversation,
    parse_calls,
    with_tools,
)

if TYPE_CHECKING:
    from tuneloop.loop.facts import Knowledge
    from tuneloop.loop.frozen import FrozenGuard
    from tuneloop.loop.injection import SemanticFilter


@dataclass
class Checks:
    """What curation checks feedback against beyond the batch itself; the loop builds it per cycle
    (cycle.py). Without it only the batch-local rules and the training-data dedup apply."""

    knowledge: Knowledge | None = None  # training data, frozen set, documents: facts must agree
    frozen: FrozenGuard | None = None  # questions never trained on (frozen set, validation)
    semantic: SemanticFilter | None = None  # paraphrase-robust injection and abuse check
    weight: Callable[[str], float] | None = None  # an API key's vote weight (trust.py)
    judge: Any | None = None  # evaluation.judge.Judge: a second opinion on facts
    keep: frozenset[str] = frozenset()  # PII-shaped values the knowledge base states


@dataclass
class Curated:
    proposals: list[dict[str, Any]]  # what passed the automatic filters (to approve, or to use)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    pii: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ existing data


@dataclass
class Known:
    """Training data already used: question -> answers, and signatures for near-duplicate checks."""

    texts: list[str]  # "question\nanswer" per example
    answers: dict[str, list[str]]  # normalized question -> answers
    questions: list[str]
    hasher: Any
    sigs: np.ndarray  # (N, num_perm)
    q_sigs: np.ndarray  # (N, num_perm), questions only
    exact: set[str]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], threshold: float) -> Known:
        hasher = MinHasher(DedupConfig(threshold=threshold))
        pairs = [p for p in (_qa(r) for r in rows) if p is not None]
        texts = [f"{q}\n{a}" for q, a in pairs]
        answers: dict[str, list[str]] = {}
        for q, a in pairs:
            answers.setdefault(_key(q), []).append(a)
        empty = np.zeros((0, hasher.k), dtype=np.uint32)
        sigs = np.stack([hasher.signature(t) for t in texts]) if texts else empty
        q_sigs = np.stack([hasher.signature(q) for q, _ in pairs]) if pairs else empty
        return cls(texts, answers, [q for q, _ in pairs], hasher, sigs, q_sigs, {_key(t) for t in texts})

    def add(self, question: str, answer: str) -> None:
        text = f"{question}\n{answer}"
        self.texts.append(text)
        self.questions.append(question)
        self.answers.setdefault(_key(question), []).append(answer)
        self.sigs = np.vstack([self.sigs, self.hasher.signature(text)[None]])
        self.q_sigs = np.vstack([self.q_sigs, self.hasher.signature(question)[None]])
        self.exact.add(_key(text))

    def duplicate(self, question: str, answer: str, threshold: float) -> tuple[str, float] | None:
        text = f"{question}\n{answer}"
        if _key(text) in self.exact:
            return "exact", 1.0
        if len(self.sigs):
            sim = float((self.sigs == self.hasher.signature(text)).mean(axis=1).max())
            if sim >= threshold:
                return "near", sim
        return None

    def answers_to(self, question: str, threshold: float) -> list[str]:
        """Known answers to this question or a near-identical one."""
        found = list(self.answers.get(_key(question), []))
        if len(self.q_sigs):
            sims = (self.q_sigs == self.hasher.signature(question)).mean(axis=1)
            for i in np.flatnonzero(sims >= threshold):
                found.extend(self.answers.get(_key(self.questions[i]), []))
        return list(dict.fromkeys(found))


def _qa(row: dict[str, Any]) -> tuple[str, str] | None:
    msgs = row.get("messages")
    if isinstance(msgs, list) and len(msgs) >= 2 and msgs[-1].get("role") == "assistant":
        users = [m.get("content", "") for m in msgs if m.get("role") == "user"]
        return (users[-1], msgs[-1].get("content", "")) if users else None
    return None


def _key(text: str) -> str:
    return normalize(text).replace(" ", "")


def read_jsonl(paths: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise TuneloopError(
                f"training data '{p}' does not exist",
                hint="fix curate.existing_data / retrain.old_data in the loop config",
            )
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise TuneloopError(
                        f"{path}:{n}: not valid JSON", hint="one JSON object per line"
                    ) from None
    return rows


def consistent(known: str, proposed: str) -> bool:
    """Does `proposed` say what `known` says? The same numbers and most of the words."""
    numbers = lambda t: {w for w in tokenize(t) if any(c.isdigit() for c in w)}  # noqa: E731
    if numbers(known) != numbers(proposed):
        return False
    return token_f1(proposed, known) >= 0.5


# ------------------------------------------------------------------------------------------- curate


def curate(batch: Batch, settings: CurateSettings, known: Known, checks: Checks | None = None) -> Curated:
    """Automatic filters over a collected batch: proposals plus every rejection with its reason."""
    checks = checks or Checks()
    filters = TextFilters(settings.injection_patterns, settings.abuse_words, settings.max_chars)
    _prepare(batch, checks)
    out = Curated([])
    for u in batch.unmatched:
        out.rejected.append(
            {
                "response_id": u["response_id"],
                "request_id": None,
                "feedback_ids": [u["feedback_id"]],
                "reason": u["reason"],
                "detail": "",
            }
        )
    # downvoted answers without a correction: (item, prompt, answer, verdict), texts redacted
    downs: list[tuple[Interaction, list, str, Verdict]] = []
    for item in batch.interactions:
        verdict = _check(item, settings, filters, checks)
        if isinstance(verdict, Reject):
            out.rejected.append(_rejection(item, verdict))
            continue
        problem = _screen(item, verdict, filters, checks)
        if problem is not None:
            out.rejected.append(_rejection(item, problem, verdict))
            continue
        texts = _redacted(item, verdict, settings, out.pii, checks.keep)
        if isinstance(texts, Reject):
            out.rejected.append(_rejection(item, texts, verdict))
            continue
        prompt, answer, correction = texts
        correction_calls = _correction_is_call(item, correction)
        if isinstance(correction_calls, Reject):
            out.rejected.append(_rejection(item, correction_calls, verdict))
            continue
        if verdict.polarity == "down" and correction is None:
            downs.append((item, prompt, answer, verdict))
            continue
        chosen = correction if correction is not None else answer
        chosen_calls = correction_calls if correction is not None else bool(item.tool_calls)
        problem = _against_known(
            prompt, chosen, correction is not None, settings, known, checks, chosen_calls
        )
        if problem is None and checks.frozen is not None:  # after the facts: a refutation says more
            problem = checks.frozen.check(_last_user(item.prompt or []))
        if problem is not None:
            out.rejected.append(_rejection(item, problem, verdict))
            continue
        known.add(_last_user(prompt), chosen)  # so a second copy in this batch is a duplicate
        proposal = _proposal(
            item,
            prompt,
            chosen,
            answer if correction is not None else None,
            "correction" if correction is not None else "upvoted",
            verdict,
            chosen_calls,
        )
        if checks.knowledge is not None and not chosen_calls:
            proposal["reference"] = _reference(checks.knowledge, _last_user(prompt), chosen)
        out.proposals.append(proposal)
    _second_opinion(out, checks)
    ups = {}  # question key -> an upvoted proposal
    for p in out.proposals:
        if p["source"] == "upvoted":
            ups.setdefault(_key(_last_user(p["prompt"])), p)
    seen: set[tuple[str, str]] = set()
    for item, prompt, answer, verdict in downs:
        # a downvote of what is known to be right is not used (loop/kto.py), paired or alone
        question = _last_user(prompt)
        problem = downvote_problem(question, answer, known, checks.knowledge, settings.dedup_threshold, seen)
        if problem is None and checks.frozen is not None:  # a downvote on a gate question trains too
            problem = checks.frozen.check(question)
        if problem is not None:
            out.rejected.append(_rejection(item, problem, verdict))
            continue
        up = ups.get(_key(_last_user(item.prompt or [])))
        if up is not None and up["chosen"] == answer:
            out.rejected.append(
                _rejection(item, Reject("disagreement", "the same answer is upvoted elsewhere"), verdict)
            )
        elif up is not None and up.get("rejected") is None:
            up["rejected"], up["rejected_response_id"] = answer, item.response_id
            up["rejected_calls"] = bool(item.tool_calls)
            up["feedback_ids"] = up["feedback_ids"] + [r.id for r in item.ratings]
        else:  # a thumb down alone (or beyond the one pair): an undesirable KTO row
            out.proposals.append(_proposal(item, prompt, None, answer, "downvoted", verdict))
    _cap_per_key(out, settings.max_per_key, checks.weight)
    return out


def _prepare(batch: Batch, checks: Checks) -> None:
    """Embed every text of the batch in one go (per-text calls cost ~10x more)."""
    if checks.semantic is None:
        return
    texts = [m["content"] for i in batch.interactions for m in i.prompt or []]
    texts += [i.answer for i in batch.interactions if i.answer]
    texts += [r.correction or "" for i in batch.interactions for r in i.ratings]
    texts += [r.comment or "" for i in batch.interactions for r in i.ratings]
    checks.semantic.prepare(texts)


def _reference(knowledge: Knowledge, question: str, chosen: str) -> dict[str, Any] | None:
    """The known statement that supports the chosen answer: the gate's reference instead of the
    rater's words (None: nothing known says it, so no reference-based score can be trusted)."""
    found = knowledge.support(question, chosen)
    if found is None:
        return None
    statement, value = found
    return {"text": statement.text, "answer": value, "source": statement.source, "ref": statement.ref}


def _second_opinion(out: Curated, checks: Checks) -> None:
    """The judge on every proposal with relevant facts, in one batch: a contradiction rejects it."""
    if checks.judge is None or checks.knowledge is None:
        return

    # facts are statements in words: a tool call is not checked against them
    textual = [p for p in out.proposals if not p.get("chosen_calls")]
    asked = [(p, checks.knowledge.texts_for(_last_user(p["prompt"]))) for p in textual]
    asked = [(p, facts) for p, facts in asked if facts]
    if not asked:
        return
    verdicts = checks.judge.check_many(
        [FactItem(_last_user(p["prompt"]), p["chosen"], facts, id=p["response_id"]) for p, facts in asked]
    )
    refuted = set()
    for (p, facts), v in zip(asked, verdicts, strict=True):
        p["judge"] = v.label
        if v.label == "contradicts":
            refuted.add(p["response_id"])
            detail = f"the judge found {p['chosen'][:120]!r} contradicts the known facts: {'; '.join(facts)[:240]!r}"
            out.rejected.append(
                {
                    **_ids(p),
                    "reason": "judge_contradiction",
                    "detail": detail,
                    "votes": p.get("votes", {}),
                    "polarity": p.get("polarity"),
                }
            )
    out.proposals = [p for p in out.proposals if p["response_id"] not in refuted]


def rater_key(ratings: list[Rating]) -> str | None:
    """The API key whose votes decided an answer: most of its raters' last votes (ties: the earliest)."""
    last = {(r.key_id, r.user or r.key_id): r for r in sorted(ratings, key=lambda r: r.id)}
    counts = Counter(r.key_id for r in sorted(last.values(), key=lambda r: r.id))
    return counts.most_common(1)[0][0] if counts else None


def _cap_per_key(out: Curated, limit: float | None, weight: Callable[[str], float] | None = None) -> None:
    """At most `limit` proposals per key (a share of the batch below 1, else a count); the newest go.

    A share caps nothing when a single key rated the whole batch: it has no one to dominate (one
    product key in front of many users is the usual set-up), and a count is there for that case.
    With vote weights (trust.py) a key's cap shrinks with its weight relative to the heaviest key
    of the batch: a new key cannot bring as much as established ones (all new: the plain cap).
    """
    by_key = Counter(p["key_id"] for p in out.proposals)
    if limit is None or (limit < 1 and len(by_key) < 2):
        return
    base = limit * len(out.proposals) if limit < 1 else limit
    w = {k: (weight(k) if weight and k else 1.0) for k in by_key}
    top = max(w.values()) or 1.0
    caps = {k: max(1, int(base * w[k] / top)) for k in by_key}
    kept, seen = [], Counter()
    for p in out.proposals:  # in answer time order
        seen[p["key_id"]] += 1
        if seen[p["key_id"]] <= caps[p["key_id"]]:
            kept.append(p)
            continue
        detail = (
            f"key {p['key_id']} brought {by_key[p['key_id']]} of {len(out.proposals)} proposals; "
            f"at most {caps[p['key_id']]} per key (curate.max_per_key={limit:g}"
            + (f", weight {w[p['key_id']]:.2f} of {top:.2f}" if w[p["key_id"]] < top else "")
            + ")"
        )
        out.rejected.append({**_ids(p), "reason": "per_key_cap", "detail": detail})
    out.proposals = kept


def _check(item: Interaction, s: CurateSettings, filters: TextFilters, checks: Checks) -> Verdict | Reject:
    if item.status != 200 or (item.answer is None and not item.tool_calls):
        return Reject("failed_request", f"status {item.status}")
    # a prompt ends with the user's turn, or with tool results the answer goes on from
    if not item.prompt or item.prompt[-1]["role"] not in ("user", "tool"):
        return Reject("not_a_chat_prompt", "the request has no text prompt ending with a user turn")
    return agree(item.ratings, s.positive_min, s.negative_max, s.min_raters, s.min_agreement, checks.weight)


def _screen(item: Interaction, verdict: Verdict, filters: TextFilters, checks: Checks) -> Reject | None:
    """Injection, abuse and size: literal patterns, then paraphrases."""
    assert item.prompt is not None
    texts = [(f"prompt ({m['role']})", m["content"]) for m in item.prompt]
    texts += [("correction", verdict.correction)] + [("comment", r.comment) for r in item.ratings]
    if verdict.polarity == "up":
        texts.append(("answer", _answer(item)))
    for role, text in texts:
        if (r := filters.check(role, text)) is not None:
            return r
    if checks.semantic is not None:
        # what people wrote: a system prompt states a role by design ("You are ... support"), and the
        # model's own answer is checked by the patterns above (its prompt, the likely source, here)
        for role, text in texts:
            if (
                role not in ("prompt (system)", "answer")
                and (r := checks.semantic.check(role, text)) is not None
            ):
                return r
    return None


def _redacted(
    item: Interaction,
    verdict: Verdict,
    s: CurateSettings,
    counts: dict[str, int],
    keep: frozenset[str] = frozenset(),
):
    """(prompt, answer, correction) with PII replaced, or a Reject when PII means drop. Values in
    `keep` (stated by the knowledge base: a product's IP, a hotline) are facts and stay."""
    if s.pii == "off":
        return item.prompt, _answer(item), verdict.correction
    keep = keep if s.keep_known_values else frozenset()
    found: list[tuple[str, str]] = []
    prompt = [_redact_message(m, keep, found) for m in item.prompt or []]
    answer = _redact(_answer(item), keep, found)
    correction = _redact(verdict.correction, keep, found) if verdict.correction else None
    # the gateway redacts what it stores (log.redact_pii): its placeholders are PII found, too
    texts = [m["content"] for m in item.prompt or []] + [item.answer or "", verdict.correction or ""]
    found += [(kind, "") for text in texts for kind in placeholders(text)]
    if found and s.pii == "drop":
        return Reject("pii", ", ".join(sorted({t for t, _ in found})))
    for kind, _ in found:
        counts[kind] = counts.get(kind, 0) + 1
    return prompt, answer, correction


def _answer(item: Interaction) -> str:
    """The answer as curation checks it: its text, or the canonical text of its tool calls."""
    if item.tool_calls:
        return calls_text(item.tool_calls, item.answer)
    return item.answer or ""


def _correction_is_call(item: Interaction, correction: str | None) -> bool | Reject:
    """Whether a correction is tool calls; a correction of a tool-call answer must be (Reject if not)."""
    if correction is None or not (item.tools or item.tool_calls):
        return False
    try:
        parse_calls(correction, item.tools)
    except ToolRowError as e:
        if not item.tool_calls:
            return False  # a text answer corrected with text
        return Reject("correction_not_a_tool_call", f"{e}; {CORRECTION_HINT}")
    return True


def _redact_message(m: dict[str, Any], keep: frozenset[str], found: list[tuple[str, str]]) -> dict[str, Any]:
    """A prompt message with PII replaced in its text and in its tool calls' arguments."""
    out = {**m, "content": _redact(m["content"], keep, found)}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {
                **c,
                "function": {**c["function"], "arguments": _redact(c["function"]["arguments"], keep, found)},
            }
            if isinstance(c.get("function"), dict) and isinstance(c["function"].get("arguments"), str)
            else c
            for c in m["tool_calls"]
        ]
    return out


def _redact(text: str, keep: frozenset[str], found: list[tuple[str, str]]) -> str:
    """tuneloop.data.pii's spans, less those whose value the knowledge base states."""
    spans = [s for s in find_spans(text) if text[s.start : s.end] not in keep]
    if not spans:
        return text
    parts, pos = [], 0
    for s in spans:
        found.append((s.type, text[s.start : s.end]))
        parts += (text[pos : s.start], f"<{s.type.upper()}>")
        pos = s.end
    return "".join([*parts, text[pos:]])


def _against_known(
    prompt: list[dict[str, str]],
    chosen: str,
    is_correction: bool,
    s: CurateSettings,
    known: Known,
    checks: Checks | None = None,
    is_call: bool = False,
) -> Reject | None:
    """Duplicates of the training data, and answers that contradict what is known: a correction against
    the training data's answers to the same question, and any chosen answer (upvoted or corrected)
    against the facts of the training data, the frozen set and the documents (facts.py)."""
    question = _last_user(prompt)
    dup = known.duplicate(question, chosen, s.dedup_threshold)
    if dup is not None:
        return Reject(f"duplicate_{dup[0]}", f"already in the training data (similarity {dup[1]:.2f})")
    if s.conflicts != "reject" or is_call:  # facts are statements in words, not tool calls
        return None
    if is_correction:
        for answer in known.answers_to(question, s.dedup_threshold):
            if not consistent(answer, chosen):
                return Reject("conflicts_with_training_data", f"the training data answers {answer!r}")
    if checks is not None and checks.knowledge is not None:
        found = checks.knowledge.contradiction(question, chosen)
        if found is not None:
            return Reject(found.reason, found.detail)
    return None


def _last_user(prompt: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _proposal(
    item: Interaction,
    prompt: list[dict[str, str]],
    chosen: str,
    rejected: str | None,
    source: str,
    verdict: Verdict,
    chosen_calls: bool = False,
) -> dict[str, Any]:
    calls = {"tools": item.tools, "chosen_calls": chosen_calls, "rejected_calls": bool(item.tool_calls)}
    return {
        **calls,
        "response_id": item.response_id,
        "request_id": item.request_id,
        "variant": item.variant,
        "model_version": item.model_version,
        "source": source,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "feedback_ids": [r.id for r in item.ratings],
        "raters": verdict.raters,
        "key_id": rater_key(item.ratings),
        "agreement": round(verdict.agreement, 3),
        "mean_rating": round(verdict.mean_rating, 3),
        "polarity": verdict.polarity,
        "votes": verdict.votes,
        "weights": verdict.weights,
    }


def _rejection(item: Interaction, r: Reject, verdict: Verdict | None = None) -> dict[str, Any]:
    out = {
        "response_id": item.response_id,
        "request_id": item.request_id,
        "feedback_ids": [x.id for x in item.ratings],
        "reason": r.reason,
        "detail": r.detail,
    }
    if verdict is not None:  # who voted for what was rejected (the keys' records, trust.py)
        out.update(polarity=verdict.polarity, votes=verdict.votes)
    return out


# ------------------------------------------------------------------------------------ approval


def apply_reviews(curated: Curated, reviews: list[Any], filters: TextFilters) -> list[dict[str, Any]]:
    """Proposals as the reviewers left them: approved (edited answers re-checked), rejected counted."""
    by_id = {r.response_id: r for r in reviews}
    kept = []
    for p in curated.proposals:
        r = by_id.get(p["response_id"])
        if r is None or r.status == "pending":
            raise TuneloopError(
                f"proposal {p['response_id']} has not been reviewed",
                hint="review it with `tuneloop feedback review`",
            )
        if r.status == "rejected":
            curated.rejected.append({**_ids(p), "reason": "rejected_by_reviewer", "detail": r.reason or ""})
            continue
        if r.edited is not None:
            problem = filters.check("edited answer", r.edited)
            if problem is None and p.get("chosen_calls"):
                try:
                    parse_calls(r.edited, p.get("tools"))
                except ToolRowError as e:
                    problem = Reject("correction_not_a_tool_call", f"edited answer: {e}; {CORRECTION_HINT}")
            if problem is not None:
                curated.rejected.append({**_ids(p), "reason": problem.reason, "detail": problem.detail})
                continue
            p = {**p, "chosen": r.edited, "source": p["source"] + "+edited", "reviewer": r.reviewer}
            if p.get("rejected") == r.edited:
                p["rejected"] = None
        kept.append({**p, "reviewer": r.reviewer})
    return kept


def _ids(p: dict[str, Any]) -> dict[str, Any]:
    return {"response_id": p["response_id"], "request_id": p["request_id"], "feedback_ids": p["feedback_ids"]}


# ------------------------------------------------------------------------------------ datasets


def _heldout(prompt: list[dict[str, str]], fraction: float, seed: int) -> bool:
    """By the question, not the answer: two answers to one question never straddle train and held-out
    (the gate would score memorisation), and a re-run with the same feedback splits the same way."""
    key = f"{seed}:{_key(_last_user(prompt))}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


def build_dataset(
    proposals: list[dict[str, Any]],
    curated: Curated,
    out: Path,
    settings: CurateSettings,
    old_sft: list[dict[str, Any]],
    old_pref: list[dict[str, Any]],
    info: dict[str, Any],
    old_kto: list[dict[str, Any]] = (),
) -> dict[str, Any]:
    """{sft,dpo,kto}/{train,val}.jsonl (old + new train; new held-out as val) and manifest.json."""
    sft = {"train": [], "val": []}
    dpo = {"train": [], "val": []}
    kto = {"train": [], "val": []}
    examples = []
    for p in proposals:
        problem = _tool_row_problem(p)
        if problem is not None:
            curated.rejected.append({**_ids(p), "reason": "invalid_tool_row", "detail": problem})
            continue
        split = "val" if _heldout(p["prompt"], settings.holdout_fraction, settings.holdout_seed) else "train"
        link = {"request_id": p["request_id"], "response_id": p["response_id"], "source": p["source"]}
        for row in kto_rows(p):
            kto[split].append({**row, **link})
            examples.append(
                {
                    "id": row["id"],
                    "kind": "kto",
                    "split": split,
                    **link,
                    "feedback_ids": p["feedback_ids"],
                    "key_id": p.get("key_id"),
                }
            )
        if p["chosen"] is None:  # a thumb down alone: nothing to imitate or to prefer
            continue
        sid = f"fb-{p['response_id']}"
        answer = assistant_message(p["chosen"], p.get("chosen_calls", False), p.get("tools"))
        sft[split].append(with_tools({"id": sid, "messages": [*p["prompt"], answer], **link}, p.get("tools")))
        examples.append(
            {
                "id": sid,
                "kind": "sft",
                "split": split,
                **link,
                "feedback_ids": p["feedback_ids"],
                "key_id": p.get("key_id"),
            }
        )
        if p.get("rejected"):
            did = f"pref-{p['response_id']}"
            dpo[split].append(
                with_tools(
                    {
                        "id": did,
                        "prompt": p["prompt"],
                        "chosen": _side(p, "chosen"),
                        "rejected": _side(p, "rejected"),
                        **link,
                        "rejected_response_id": p.get("rejected_response_id", p["response_id"]),
                    },
                    p.get("tools"),
                )
            )
            examples.append(
                {
                    "id": did,
                    "kind": "dpo",
                    "split": split,
                    **link,
                    "feedback_ids": p["feedback_ids"],
                    "key_id": p.get("key_id"),
                }
            )
    outputs = {}
    for kind, rows, old in (("sft", sft, old_sft), ("dpo", dpo, old_pref), ("kto", kto, list(old_kto))):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        outputs[f"{kind}/train.jsonl"] = _write(folder / "train.jsonl", [*old, *rows["train"]])
        outputs[f"{kind}/val.jsonl"] = _write(folder / "val.jsonl", rows["val"])
    reasons: dict[str, int] = {}
    for r in curated.rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1

    manifest = {
        **info,
        "created": time.time(),
        "config": settings.model_dump(mode="json"),
        "counts": {
            "proposals": len(curated.proposals),
            "approved": len(proposals),
            "rejected": len(curated.rejected),
            "old_sft": len(old_sft),
            "old_preferences": len(old_pref),
            "new_sft_train": len(sft["train"]),
            "new_sft_heldout": len(sft["val"]),
            "new_dpo_train": len(dpo["train"]),
            "new_dpo_heldout": len(dpo["val"]),
            "old_kto": len(old_kto),
            **kto_counts(kto),
        },
        "rejections": reasons,
        "pii_redacted": curated.pii,
        "rejected": curated.rejected,
        "examples": examples,
        "outputs": outputs,
        "fingerprint": fingerprint(outputs),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
    return manifest


def _side(p: dict[str, Any], side: str) -> Any:
    """A DPO side as it was: a text answer stays a string, tool calls are an assistant message."""
    if not p.get(f"{side}_calls"):
        return p[side]
    return [assistant_message(p[side], True, p.get("tools"))]


def _tool_row_problem(p: dict[str, Any]) -> str | None:
    """Why a proposal's rows would not pass the training row check (data/tool_rows.py), or None."""
    try:
        for side in ("chosen", "rejected"):
            if p.get(side) is not None:
                answer = assistant_message(p[side], p.get(f"{side}_calls", False), p.get("tools"))
                check_conversation([*p["prompt"], answer], p.get("tools"))
    except ToolRowError as e:
        return str(e)
    return None


def _write(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
