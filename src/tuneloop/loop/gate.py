"""Gate: the candidate against production on a frozen evaluation set plus held-out new feedback examples.

It passes only when it improves by at least `margin` (0: not worse) where the new feedback is (the held-out examples, or
the frozen set when none were held out) and does not drop by more than `tolerance` on the frozen
set. `decide` is the rule (pure, unit-tested); `evaluate_pair` produces its numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.loop.config import GateSettings


@dataclass
class Scores:
    frozen: float
    feedback: float | None  # None: no held-out feedback examples
    frozen_metric: str
    feedback_metric: str
    n_frozen: int
    n_feedback: int


@dataclass
class GateDecision:
    passed: bool
    reason: str
    improvement: float
    frozen_delta: float
    production: Scores
    candidate: Scores
    margin: float
    tolerance: float

    def numbers(self) -> dict[str, Any]:
        """The numbers behind the decision (passed and reason are the decision itself)."""
        return {k: v for k, v in asdict(self).items() if k not in ("passed", "reason")}


def decide(production: Scores, candidate: Scores, margin: float, tolerance: float) -> GateDecision:
    frozen_delta = candidate.frozen - production.frozen
    on_feedback = candidate.feedback is not None and production.feedback is not None
    improvement = (candidate.feedback - production.feedback) if on_feedback else frozen_delta  # type: ignore[operator]
    where = "held-out feedback" if on_feedback else "frozen set"
    if frozen_delta < -tolerance - 1e-12:
        passed, reason = (
            False,
            f"regresses on the frozen set by {-frozen_delta:.4f} (tolerance {tolerance:.4f})",
        )
    elif improvement < margin - 1e-12:
        passed, reason = False, f"improves {where} by {improvement:+.4f}, needs at least {margin:.4f}"
    else:
        passed, reason = (
            True,
            f"improves {where} by {improvement:+.4f} (margin {margin:.4f}); frozen {frozen_delta:+.4f}",
        )
    return GateDecision(passed, reason, improvement, frozen_delta, production, candidate, margin, tolerance)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TuneloopError(f"gate.frozen_eval '{path}' does not exist",
                            hint="point it at an SFT .jsonl (messages, optional answer) never used for training")  # fmt: skip
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise TuneloopError(f"gate.frozen_eval '{path}' has no rows", hint="the gate needs questions to ask")
    return rows


def _score(model_ref: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], metric: str,
           s: GateSettings) -> tuple[float, str, list[dict[str, Any]]]:  # fmt: skip
    from tuneloop.evaluation.harness import evaluate

    report = evaluate(model_ref, rows, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                      model=model, tokenizer=tokenizer)  # fmt: skip
    if metric not in report.metrics:  # contains_answer needs an `answer` on the rows
        metric = "token_f1"
    samples = [{"id": x.id, "question": x.question, "prediction": x.prediction, "score": x.scores.get(metric)}
               for x in report.samples]  # fmt: skip
    return float(report.metrics[metric]), metric, samples


def scores_of(model_ref: str, frozen: list[dict[str, Any]], feedback: list[dict[str, Any]],
              s: GateSettings) -> tuple[Scores, dict[str, Any]]:  # fmt: skip
    from tuneloop.quickstart import load_for_answers

    model, tokenizer, _ = load_for_answers(model_ref, s.device)
    f_score, f_metric, f_samples = _score(model_ref, model, tokenizer, frozen, s.metric, s)
    b_score, b_metric, b_samples = None, s.feedback_metric, []
    if feedback:
        b_score, b_metric, b_samples = _score(model_ref, model, tokenizer, feedback, s.feedback_metric, s)
    del model
    return Scores(f_score, b_score, f_metric, b_metric, len(frozen), len(feedback)), {
        "frozen": f_samples,
        "feedback": b_samples,
    }


def evaluate_pair(production_ref: str, candidate_ref: str, heldout: Path, s: GateSettings,
                  out: Path) -> GateDecision:  # fmt: skip
    frozen = read_rows(s.frozen_eval)[: s.max_samples]
    feedback = []
    if heldout.is_file():
        feedback = [json.loads(x) for x in heldout.read_text(encoding="utf-8").splitlines() if x.strip()]
    prod, prod_samples = scores_of(production_ref, frozen, feedback, s)
    cand, cand_samples = scores_of(candidate_ref, frozen, feedback, s)
    decision = decide(prod, cand, s.margin, s.tolerance)
    report = {"production": production_ref, "candidate": candidate_ref, "passed": decision.passed,
              "reason": decision.reason, **decision.numbers(),
              "samples": {"production": prod_samples, "candidate": cand_samples}}  # fmt: skip
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    return decision
