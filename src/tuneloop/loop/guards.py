"""What a cycle checks feedback against, and the data it hands the retrain and the gate.

- `build_checks`: the known facts (training data, frozen set, `curate.knowledge` documents), the
  frozen questions (gate set + the retrain's validation rows), the semantic injection check, the
  API keys' vote weights and the optional judge, for `curate.curate`.
- `write_validation`: the retrain's validation rows, chosen by the loop and written as absolute
  paths in the cycle folder: a fixed sample of the old training data (kept in training, so its loss
  shows forgetting), never the frozen set or the held-out feedback the gate scores. A train config's
  own `data.val_path` is overridden (it was inherited, relative, and in the example the gate set).
- `write_gate_feed`: the held-out new examples the gate scores, each with a known statement as its
  reference (facts.py `support`), never the rater's own words; the rest go to `unverified.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.evaluation.judge import Judge
from tuneloop.loop.config import LoopConfig
from tuneloop.loop.curate import Checks, read_jsonl
from tuneloop.loop.embed import embedder
from tuneloop.loop.facts import Knowledge, document_statements, qa_statements
from tuneloop.loop.frozen import FrozenGuard, Protected
from tuneloop.loop.injection import SemanticFilter


@dataclass
class Validation:
    paths: dict[str, Path]  # objective -> absolute .jsonl (empty file: no validation)
    questions: list[str]


def write_validation(
    cfg: LoopConfig, old_sft: list[dict[str, Any]], old_pref: list[dict[str, Any]], folder: Path
) -> Validation:
    r = cfg.retrain
    folder.mkdir(parents=True, exist_ok=True)
    paths, questions = {}, []
    for kind, rows in (("sft", old_sft), ("dpo", old_pref)):
        chosen = _sample(rows, r.validation_rows) if r.validation == "old_data" else []
        path = (folder / f"{kind}.jsonl").resolve()
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in chosen), encoding="utf-8")
        paths[kind] = path
        questions += [q for q in (_question(x) for x in chosen) if q]
    return Validation(paths, list(dict.fromkeys(questions)))


def _sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The same rows every cycle for the same data: the n smallest hashes of the rows' text."""
    keyed = sorted(rows, key=lambda x: hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest())
    return keyed[:n]


def _question(row: dict[str, Any]) -> str | None:
    msgs = row.get("messages") or row.get("prompt")
    if isinstance(msgs, list):
        return next((m.get("content") for m in reversed(msgs) if m.get("role") == "user"), None)
    return None


def build_checks(
    cfg: LoopConfig, training_rows: list[dict[str, Any]], validation: Validation, trust: Any, stack: ExitStack
) -> Checks:
    c = cfg.curate
    emb = embedder(c.embedder)
    frozen_rows = read_jsonl([cfg.gate.frozen_eval])
    statements = qa_statements(training_rows, "training data", "training data")
    statements += qa_statements(frozen_rows, "frozen set", cfg.gate.frozen_eval)
    statements += document_statements(c.knowledge)
    knowledge = Knowledge(statements, emb)
    protected = [
        Protected(f"frozen set ({cfg.gate.frozen_eval})", q) for q in map(_question, frozen_rows) if q
    ]
    protected += [Protected("retrain's validation set", q) for q in validation.questions]
    guard = FrozenGuard(
        protected,
        emb,
        minhash=c.frozen.minhash,
        words_jaccard=c.frozen.words,
        similarity=c.frozen.similarity,
        cjk_bigrams=c.frozen.cjk_bigrams,
    )
    semantic = None
    if emb is not None:
        known_good = [s.text for s in statements if s.source != "documents"]
        semantic = SemanticFilter(emb, c.injection_threshold, c.injection_margin, known_good)
    judge = None
    if c.judge is not None:
        judge = stack.enter_context(Judge(c.judge))
    keep = knowledge.keep() if c.keep_known_values else frozenset()
    return Checks(knowledge, guard, semantic, trust.weight, judge, keep)


def write_gate_feed(data: Path, proposals: list[dict[str, Any]]) -> dict[str, int]:
    """data/gate/feedback.jsonl (held-out examples scored against known facts) and unverified.jsonl."""
    by_response = {p["response_id"]: p for p in proposals}
    heldout = data / "sft" / "val.jsonl"
    rows = read_jsonl([heldout]) if heldout.is_file() else []
    verified, unverified = [], []
    for row in rows:
        p = by_response.get(str(row.get("response_id")))
        ref = p.get("reference") if p else None
        prompt = row["messages"][:-1]
        if ref is None:
            unverified.append(
                {"id": row["id"], "messages": prompt, "rater_answer": row["messages"][-1]["content"]}
            )
            continue
        out = {
            "id": row["id"],
            "messages": [*prompt, {"role": "assistant", "content": ref["text"]}],
            "reference_source": f"{ref['source']} ({ref['ref']})",
            "request_id": row.get("request_id"),
        }
        if ref.get("answer"):
            out["answer"] = ref["answer"]
        verified.append(out)
    folder = data / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in (("feedback.jsonl", verified), ("unverified.jsonl", unverified)):
        (folder / name).write_text(
            "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8"
        )
    return {"gate_feedback": len(verified), "gate_unverified": len(unverified)}
