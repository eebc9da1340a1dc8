"""Curate: rated answers -> proposals -> (approval) -> SFT examples and DPO pairs, with a manifest.

Per answer: it must have succeeded and be text; the raters must agree (filters.agree); prompt,
answer, correction and comment pass the injection, abuse and size filters; PII is redacted (or the
answer dropped); a correction must not contradict the training data; an example that is already
in the training data (exact or near duplicate) or twice in this batch is dropped. Then:

- a correction gives an SFT example (prompt -> correction) and a DPO pair (correction over answer);
- an upvoted answer gives an SFT example, and a DPO pair over any downvoted answer to the same prompt;
- a downvoted answer without a correction is used only as the loser of such a pair.

Every rejection is counted with its reason, and every example is linked to its request id and to
the API key whose ratings brought it. No key brings more than `curate.max_per_key` of a batch: the
surplus (its newest proposals) is rejected as `per_key_cap`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import TuneloopError
from tuneloop.loop.collect import Batch, Interaction, Rating
from tuneloop.loop.config import CurateSettings
from tuneloop.loop.filters import Reject, TextFilters, Verdict, agree


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
        from tuneloop.data.config import DedupConfig
        from tuneloop.data.dedup import MinHasher

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
    from tuneloop.data.dedup import normalize

    return normalize(text).replace(" ", "")


def read_jsonl(paths: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise TuneloopError(f"training data '{p}' does not exist",
                                hint="fix curate.existing_data / retrain.old_data in the loop config")  # fmt: skip
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
    from tuneloop.evaluation.metrics import token_f1, tokenize

    numbers = lambda t: {w for w in tokenize(t) if any(c.isdigit() for c in w)}  # noqa: E731
    if numbers(known) != numbers(proposed):
        return False
    return token_f1(proposed, known) >= 0.5


# ------------------------------------------------------------------------------------------- curate


def curate(batch: Batch, settings: CurateSettings, known: Known) -> Curated:
    """Automatic filters over a collected batch: proposals plus every rejection with its reason."""
    filters = TextFilters(settings.injection_patterns, settings.abuse_words, settings.max_chars)
    out = Curated([])
    for u in batch.unmatched:
        out.rejected.append({"response_id": u["response_id"], "request_id": None,
                             "feedback_ids": [u["feedback_id"]], "reason": u["reason"], "detail": ""})  # fmt: skip
    ups: dict[str, dict[str, Any]] = {}  # question key -> an upvoted proposal
    downs: list[tuple[Interaction, str]] = []  # downvoted answers without a correction (redacted text)
    for item in batch.interactions:
        verdict = _check(item, settings, filters)
        if isinstance(verdict, Reject):
            out.rejected.append(_rejection(item, verdict))
            continue
        texts = _redacted(item, verdict, settings, out.pii)
        if isinstance(texts, Reject):
            out.rejected.append(_rejection(item, texts))
            continue
        prompt, answer, correction = texts
        if verdict.polarity == "down" and correction is None:
            downs.append((item, answer))
            continue
        chosen = correction if correction is not None else answer
        problem = _against_known(prompt, chosen, correction is not None, settings, known)
        if problem is not None:
            out.rejected.append(_rejection(item, problem))
            continue
        known.add(_last_user(prompt), chosen)  # so a second copy in this batch is a duplicate
        proposal = _proposal(item, prompt, chosen, answer if correction is not None else None,
                             "correction" if correction is not None else "upvoted", verdict)  # fmt: skip
        out.proposals.append(proposal)
        if correction is None:
            ups.setdefault(_key(_last_user(prompt)), proposal)
    for item, answer in downs:
        up = ups.get(_key(_last_user(item.prompt or [])))
        if up is None:
            out.rejected.append(_rejection(item, Reject("downvote_without_alternative",
                                                        "no correction and no upvoted answer to the same prompt")))  # fmt: skip
        elif up.get("rejected") is None and up["chosen"] != answer:
            up["rejected"], up["rejected_response_id"] = answer, item.response_id
            up["feedback_ids"] = up["feedback_ids"] + [r.id for r in item.ratings]
        else:
            out.rejected.append(
                _rejection(item, Reject("duplicate_in_batch", "another downvote already pairs with it"))
            )
    _cap_per_key(out, settings.max_per_key)
    return out


def rater_key(ratings: list[Rating]) -> str | None:
    """The API key whose votes decided an answer: most of its raters' last votes (ties: the earliest)."""
    last = {(r.key_id, r.user or r.key_id): r for r in sorted(ratings, key=lambda r: r.id)}
    counts = Counter(r.key_id for r in sorted(last.values(), key=lambda r: r.id))
    return counts.most_common(1)[0][0] if counts else None


def _cap_per_key(out: Curated, limit: float | None) -> None:
    """At most `limit` proposals per key (a share of the batch below 1, else a count); the newest go.

    A share caps nothing when a single key rated the whole batch: it has no one to dominate (one
    product key in front of many users is the usual set-up), and a count is there for that case.
    """
    by_key = Counter(p["key_id"] for p in out.proposals)
    if limit is None or (limit < 1 and len(by_key) < 2):
        return
    cap = max(1, int(limit * len(out.proposals))) if limit < 1 else int(limit)
    kept, seen = [], Counter()
    for p in out.proposals:  # in answer time order
        seen[p["key_id"]] += 1
        if seen[p["key_id"]] <= cap:
            kept.append(p)
            continue
        detail = (f"key {p['key_id']} brought {by_key[p['key_id']]} of {len(out.proposals)} proposals; "
                  f"at most {cap} per key (curate.max_per_key={limit:g})")  # fmt: skip
        out.rejected.append({**_ids(p), "reason": "per_key_cap", "detail": detail})
    out.proposals = kept


def _check(item: Interaction, s: CurateSettings, filters: TextFilters) -> Verdict | Reject:
    if item.status != 200 or item.answer is None:
        return Reject("failed_request", f"status {item.status}")
    if not item.prompt or item.prompt[-1]["role"] != "user":
        return Reject("not_a_chat_prompt", "the request has no text prompt ending with a user turn")
    verdict = agree(item.ratings, s.positive_min, s.negative_max, s.min_raters, s.min_agreement)
    if isinstance(verdict, Reject):
        return verdict
    for m in item.prompt:
        if (r := filters.check(f"prompt ({m['role']})", m["content"])) is not None:
            return r
    checks = [("correction", verdict.correction)] + [("comment", r.comment) for r in item.ratings]
    if verdict.polarity == "up":
        checks.append(("answer", item.answer))
    for role, text in checks:
        if (r := filters.check(role, text)) is not None:
            return r
    return verdict


def _redacted(item: Interaction, verdict: Verdict, s: CurateSettings, counts: dict[str, int]):
    """(prompt, answer, correction) with PII replaced, or a Reject when PII means drop."""
    from tuneloop.data.pii import redact
    from tuneloop.serve.privacy import placeholders

    if s.pii == "off":
        return item.prompt, item.answer, verdict.correction
    found: list[tuple[str, str]] = []
    prompt = [{**m, "content": redact(m["content"], None, found)} for m in item.prompt or []]
    answer = redact(item.answer or "", None, found)
    correction = redact(verdict.correction, None, found) if verdict.correction else None
    # the gateway redacts what it stores (log.redact_pii): its placeholders are PII found, too
    texts = [m["content"] for m in item.prompt or []] + [item.answer or "", verdict.correction or ""]
    found += [(kind, "") for text in texts for kind in placeholders(text)]
    if found and s.pii == "drop":
        return Reject("pii", ", ".join(sorted({t for t, _ in found})))
    for kind, _ in found:
        counts[kind] = counts.get(kind, 0) + 1
    return prompt, answer, correction


def _against_known(prompt: list[dict[str, str]], chosen: str, is_correction: bool, s: CurateSettings,
                   known: Known) -> Reject | None:  # fmt: skip
    question = _last_user(prompt)
    dup = known.duplicate(question, chosen, s.dedup_threshold)
    if dup is not None:
        return Reject(f"duplicate_{dup[0]}", f"already in the training data (similarity {dup[1]:.2f})")
    if is_correction and s.conflicts == "reject":
        for answer in known.answers_to(question, s.dedup_threshold):
            if not consistent(answer, chosen):
                return Reject("conflicts_with_training_data", f"the training data answers {answer!r}")
    return None


def _last_user(prompt: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _proposal(item: Interaction, prompt: list[dict[str, str]], chosen: str, rejected: str | None, source: str,
              verdict: Verdict) -> dict[str, Any]:  # fmt: skip
    return {"response_id": item.response_id, "request_id": item.request_id, "variant": item.variant,
            "model_version": item.model_version, "source": source, "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "feedback_ids": [r.id for r in item.ratings], "raters": verdict.raters,
            "key_id": rater_key(item.ratings), "agreement": round(verdict.agreement, 3),
            "mean_rating": round(verdict.mean_rating, 3)}  # fmt: skip


def _rejection(item: Interaction, r: Reject) -> dict[str, Any]:
    return {"response_id": item.response_id, "request_id": item.request_id,
            "feedback_ids": [x.id for x in item.ratings], "reason": r.reason, "detail": r.detail}  # fmt: skip


# ------------------------------------------------------------------------------------ approval


def apply_reviews(curated: Curated, reviews: list[Any], filters: TextFilters) -> list[dict[str, Any]]:
    """Proposals as the reviewers left them: approved (edited answers re-checked), rejected counted."""
    by_id = {r.response_id: r for r in reviews}
    kept = []
    for p in curated.proposals:
        r = by_id.get(p["response_id"])
        if r is None or r.status == "pending":
            raise TuneloopError(f"proposal {p['response_id']} has not been reviewed",
                                hint="review it with `tuneloop feedback review`")  # fmt: skip
        if r.status == "rejected":
            curated.rejected.append({**_ids(p), "reason": "rejected_by_reviewer", "detail": r.reason or ""})
            continue
        if r.edited is not None:
            problem = filters.check("edited answer", r.edited)
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


def build_dataset(proposals: list[dict[str, Any]], curated: Curated, out: Path, settings: CurateSettings,
                  old_sft: list[dict[str, Any]], old_pref: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """sft/{train,val}.jsonl, dpo/{train,val}.jsonl (old + new train; new held-out as val) and manifest.json."""
    sft = {"train": [], "val": []}
    dpo = {"train": [], "val": []}
    examples = []
    for p in proposals:
        split = "val" if _heldout(p["prompt"], settings.holdout_fraction, settings.holdout_seed) else "train"
        link = {"request_id": p["request_id"], "response_id": p["response_id"], "source": p["source"]}
        sid = f"fb-{p['response_id']}"
        sft[split].append({"id": sid, "messages": [*p["prompt"], {"role": "assistant", "content": p["chosen"]}],
                           **link})  # fmt: skip
        examples.append({"id": sid, "kind": "sft", "split": split, **link, "feedback_ids": p["feedback_ids"],
                         "key_id": p.get("key_id")})  # fmt: skip
        if p.get("rejected"):
            did = f"pref-{p['response_id']}"
            dpo[split].append({"id": did, "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                               **link, "rejected_response_id": p.get("rejected_response_id", p["response_id"])})  # fmt: skip
            examples.append({"id": did, "kind": "dpo", "split": split, **link, "feedback_ids": p["feedback_ids"],
                             "key_id": p.get("key_id")})  # fmt: skip
    outputs = {}
    for kind, rows, old in (("sft", sft, old_sft), ("dpo", dpo, old_pref)):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        outputs[f"{kind}/train.jsonl"] = _write(folder / "train.jsonl", [*old, *rows["train"]])
        outputs[f"{kind}/val.jsonl"] = _write(folder / "val.jsonl", rows["val"])
    reasons: dict[str, int] = {}
    for r in curated.rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    from tuneloop.data.manifest import fingerprint

    manifest = {
        **info, "created": time.time(), "config": settings.model_dump(mode="json"),
        "counts": {"proposals": len(curated.proposals), "approved": len(proposals),
                   "rejected": len(curated.rejected), "old_sft": len(old_sft), "old_preferences": len(old_pref),
                   "new_sft_train": len(sft["train"]), "new_sft_heldout": len(sft["val"]),
                   "new_dpo_train": len(dpo["train"]), "new_dpo_heldout": len(dpo["val"])},
        "rejections": reasons, "pii_redacted": curated.pii, "rejected": curated.rejected,
        "examples": examples, "outputs": outputs, "fingerprint": fingerprint(outputs),
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
    return manifest


def _write(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
