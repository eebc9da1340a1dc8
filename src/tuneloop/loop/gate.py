"""Gate: the candidate against production, example by example, with an interval on every difference.

Both models answer the same questions; each criterion is one paired comparison (per-example values
of production and candidate, in the same order) with a rule:
- `improve` (the held-out new feedback examples, or the frozen set when none were held out): the
  lower bound of the candidate's improvement must be above `gate.margin`;
- `not_worse` (the frozen set; more criteria plug in: a judge, general tasks): the lower bound of
  the difference must stay above `-gate.tolerance`.
Intervals are two-sided at `gate.confidence` (loop/stats.py: exact-score for 0/1 scores, BCa
bootstrap otherwise) and a rule uses one side, so a candidate no better than production passes at
most (1 - confidence) / 2 of the time.

Three outcomes (`decide`, pure and unit-tested; `evaluate_pair` produces its numbers):
- passed: every criterion passes;
- failed: a criterion is not shown to pass (its interval reaches past the margin or tolerance);
- not_enough_evidence: fewer held-out examples than `gate.min_examples`: nothing is registered and
  the feedback stays for the next cycle. It is decided before any score is compared, so waiting for
  more never turns into looking again and again until a lucky look passes (a fixed-sample interval
  checked at every cycle would promote a no-better candidate far more often than its level says).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.generate import generate_replies
from tuneloop.evaluation.harness import evaluate
from tuneloop.evaluation.judge import Judge, PairItem
from tuneloop.evaluation.judge_stats import position_bias
from tuneloop.loop.answers import load_for_answers
from tuneloop.loop.config import GateSettings
from tuneloop.loop.stats import Interval, paired_interval, z_value

Role = Literal["improve", "not_worse", "no_drop"]
Status = Literal["pass", "fail", "too_few"]
Outcome = Literal["passed", "failed", "not_enough_evidence"]


@dataclass
class Criterion:
    """One paired comparison the gate makes: per-example values of both models on the same examples.

    Anything that scores both models example by example plugs in (a judge's pairwise verdicts as
    wins 1/0 of each side, per-question scores of a general task)."""

    name: str  # feedback | frozen | judge | general:<task>
    metric: str
    production: Sequence[float]
    candidate: Sequence[float]
    role: Role
    threshold: float  # improve: the margin the lower bound must clear; not_worse: the allowed drop
    kind: Literal["binary", "continuous"] | None = None  # None: binary when every value is 0 or 1
    min_examples: int = 1
    fixed: bool = False  # a set that does not grow (frozen, task sets): too few examples means failed
    info: dict[str, Any] = field(default_factory=dict)  # reported with the check (a judge's counts, ...)


@dataclass
class Check:
    """What the gate found for one criterion (goes to decisions.jsonl, `loop status`, the console)."""

    name: str
    metric: str
    role: Role
    n: int
    production: float | None
    candidate: float | None
    interval: Interval
    threshold: float
    status: Status
    rule: str
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        i = self.interval
        return {
            "name": self.name,
            "metric": self.metric,
            "role": self.role,
            "n": self.n,
            "production": _round(self.production),
            "candidate": _round(self.candidate),
            "diff": _round(i.estimate),
            "low": _round(i.low),
            "high": _round(i.high),
            "method": i.method,
            "p_value": _round(i.p_value),
            "threshold": self.threshold,
            "rule": self.rule,
            "status": self.status,
            "note": self.note,
            **self.info,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def check(c: Criterion, confidence: float, resamples: int = 4000, seed: int = 0) -> Check:
    n = len(c.production)
    if len(c.candidate) != n:
        raise ValueError(
            f"gate criterion '{c.name}': {n} production values but {len(c.candidate)} candidate values"
        )
    prod = sum(c.production) / n if n else None
    cand = sum(c.candidate) / n if n else None
    bound = c.threshold if c.role == "improve" else -c.threshold
    rule = {
        "improve": f"lower bound > {bound:+.4f}",
        "not_worse": f"lower bound >= {bound:+.4f}",
        "no_drop": f"upper bound >= {bound:+.4f}",
    }[c.role]
    if n < max(c.min_examples, 1):
        note = f"{n} examples, the gate needs {c.min_examples} (gate.min_examples)"
        grows = not c.fixed  # a frozen or task set does not grow by waiting: too few is a failure
        return Check(
            c.name,
            c.metric,
            c.role,
            n,
            prod,
            cand,
            Interval(None, None, None, "none"),
            c.threshold,
            "too_few" if grows else "fail",
            rule,
            note if grows else note + "; this set does not grow",
        )
    interval = paired_interval(c.production, c.candidate, confidence, c.kind, resamples, seed)
    low, high = float(interval.low), float(interval.high)  # type: ignore[arg-type]
    eps = 1e-12
    if c.role == "no_drop":  # fails only on a drop shown beyond the tolerance
        status: Status = "fail" if high < bound - eps else "pass"
        note = "a drop is shown" if status == "fail" else ""
        return Check(
            c.name, c.metric, c.role, n, prod, cand, interval, c.threshold, status, rule, note, c.info
        )
    passed = low > bound + eps if c.role == "improve" else low >= bound - eps
    if passed:
        return Check(
            c.name, c.metric, c.role, n, prod, cand, interval, c.threshold, "pass", rule, info=c.info
        )
    shown = high <= bound + eps if c.role == "improve" else high < bound - eps
    note = "shown" if shown else "not shown: the interval straddles the bound"
    if not shown and c.fixed and c.role == "not_worse" and interval.method == "newcombe":
        best = z_value(confidence) ** 2 / (
            n + z_value(confidence) ** 2
        )  # identical answers on every question
        note += f" ({n} questions cannot bound a drop below about {best:.3f}: add questions or raise gate.tolerance)"
    return Check(c.name, c.metric, c.role, n, prod, cand, interval, c.threshold, "fail", rule, note, c.info)


@dataclass
class GateDecision:
    outcome: Outcome
    reason: str
    checks: list[Check]
    confidence: float
    margin: float
    tolerance: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def _find(self, *names: str) -> Check | None:
        return next((c for c in self.checks if c.name in names), None)

    @property
    def improvement(self) -> float | None:
        c = next((c for c in self.checks if c.role == "improve"), None)
        return None if c is None else c.interval.estimate

    @property
    def frozen_delta(self) -> float | None:
        c = self._find("frozen")
        return None if c is None else c.interval.estimate

    def numbers(self) -> dict[str, Any]:
        """The numbers behind the decision (the outcome and reason are the decision itself)."""
        improve = next((c for c in self.checks if c.role == "improve"), None)
        frozen = self._find("frozen")
        return {
            "confidence": self.confidence,
            "margin": self.margin,
            "tolerance": self.tolerance,
            "improvement": _round(self.improvement),
            "improvement_ci": None
            if improve is None
            else [_round(improve.interval.low), _round(improve.interval.high)],
            "frozen_delta": _round(self.frozen_delta),
            "frozen_ci": None
            if frozen is None
            else [_round(frozen.interval.low), _round(frozen.interval.high)],
            "checks": [c.to_json() for c in self.checks],
            **self.extra,
        }


def decide(
    criteria: Sequence[Criterion],
    confidence: float = 0.95,
    *,
    margin: float = 0.0,
    tolerance: float = 0.0,
    resamples: int = 4000,
    seed: int = 0,
) -> GateDecision:
    """passed / failed / not_enough_evidence from the criteria (margin and tolerance are for the report)."""
    if not criteria:
        raise ValueError("the gate needs at least one criterion")
    checks = [check(c, confidence, resamples, seed) for c in criteria]
    failed = [c for c in checks if c.status == "fail"]
    short = [c for c in checks if c.status == "too_few"]
    if failed:
        outcome: Outcome = "failed"
        reason = "; ".join(_say(c) for c in failed)
    elif short:
        outcome, reason = "not_enough_evidence", "; ".join(_say(c) for c in short) + ": keep collecting"
    else:
        outcome, reason = "passed", "; ".join(_say(c) for c in checks)
    return GateDecision(outcome, reason, checks, confidence, margin, tolerance)


def _say(c: Check) -> str:
    """One line per check: 'feedback token_f1 +0.120 [+0.050, +0.190] (n=40): improvement shown above +0.0000'."""
    i = c.interval
    if i.estimate is None or i.low is None or i.high is None:
        return f"{c.name}: {c.note}"
    span = f"{c.name} {c.metric} {i.estimate:+.3f} [{i.low:+.3f}, {i.high:+.3f}] (n={c.n})"
    if c.role == "no_drop":
        return (
            f"{span}: {'a drop beyond' if c.status == 'fail' else 'no drop shown beyond'} {c.threshold:.4f}"
        )
    if c.status == "pass":
        if c.role == "improve":
            return f"{span}: improvement shown above {c.threshold:+.4f}"
        return f"{span}: drop shown within {c.threshold:.4f}"
    if c.role == "improve":
        return f"{span}: improvement above {c.threshold:+.4f} {c.note}"
    return f"{span}: drop within the tolerance {c.threshold:.4f} {c.note}"


# ------------------------------------------------------------------------------ scoring both models


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TuneloopError(
            f"gate.frozen_eval '{path}' does not exist",
            hint="point it at an SFT .jsonl (messages, optional answer) never used for training",
        )
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise TuneloopError(f"{p}:{n}: not valid JSON ({e})", hint="one JSON object per line") from None
    if not rows:
        raise TuneloopError(f"gate.frozen_eval '{path}' has no rows", hint="the gate needs questions to ask")
    return rows


def check_frozen(s: GateSettings) -> int:
    """The frozen set is big enough for the gate to decide at all (it cannot grow): fail before training."""
    n = len(read_rows(s.frozen_eval)[: s.max_samples])
    if n < s.min_examples:
        raise TuneloopError(
            f"gate.frozen_eval '{s.frozen_eval}' has {n} questions; the gate needs at least "
            f"gate.min_examples={s.min_examples} to bound a regression",
            hint="add questions to the frozen set (a few hundred bound a drop of a few points), "
            "or lower gate.min_examples",
        )
    return n


@dataclass
class Scored:
    """One model's answers and per-example scores on one set."""

    metric: str
    samples: list[dict[str, Any]]

    def values(self) -> list[float]:
        return [float(x["score"]) for x in self.samples if x["score"] is not None]

    @property
    def mean(self) -> float | None:
        v = self.values()
        return sum(v) / len(v) if v else None


def _score(
    model_ref: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], metric: str, s: GateSettings
) -> Scored:
    report = evaluate(
        model_ref,
        rows,
        max_new_tokens=s.max_new_tokens,
        batch_size=s.batch_size,
        model=model,
        tokenizer=tokenizer,
    )
    if metric == "auto":  # the fact's value when every reference has one: "176" is in the answer or not
        metric = "contains_answer" if all(r.get("answer") for r in rows) else "token_f1"
    if metric not in report.metrics:  # contains_answer needs an `answer` on the rows
        metric = "token_f1"
    samples = [
        {
            "id": x.id,
            "question": x.question,
            "reference": x.reference,
            "prediction": x.prediction,
            "score": x.scores.get(metric),
        }
        for x in report.samples
    ]
    return Scored(metric, samples)


def scores_of(
    model_ref: str,
    frozen: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    s: GateSettings,
    unverified: list[dict[str, Any]] | None = None,
) -> dict[str, Scored]:
    """One model's answers: frozen and held-out rows scored against their references; held-out
    questions without a trusted reference answered only (for the judge)."""
    model, tokenizer, _ = load_for_answers(model_ref, s.device)
    out = {"frozen": _score(model_ref, model, tokenizer, frozen, s.metric, s)}
    if feedback:
        out["feedback"] = _score(model_ref, model, tokenizer, feedback, s.feedback_metric, s)
    if unverified:
        prompts = [r["messages"] for r in unverified]
        replies = generate_replies(
            model, tokenizer, prompts, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size
        )
        out["unverified"] = Scored(
            "none",
            [
                {
                    "id": r.get("id"),
                    "question": r["messages"][-1]["content"],
                    "reference": None,
                    "prediction": a,
                    "score": None,
                }
                for r, a in zip(unverified, replies, strict=True)
            ],
        )
    del model
    return out


def _paired(prod: Scored, cand: Scored) -> tuple[list[float], list[float]]:
    """Per-example values of both, example by example (both answered the same rows in order)."""
    pairs = [
        (p["score"], c["score"])
        for p, c in zip(prod.samples, cand.samples, strict=True)
        if p["score"] is not None and c["score"] is not None
    ]
    return [float(p) for p, _ in pairs], [float(c) for _, c in pairs]


def criteria_of(prod: dict[str, Scored], cand: dict[str, Scored], s: GateSettings) -> list[Criterion]:
    """The default criteria: improve where the new feedback is (else on the frozen set), frozen not worse.

    With a judge (gate.judge), held-out questions without a trusted reference are its to compare, and
    the reference-scored ones count only when there are gate.min_examples of them."""
    f_prod, f_cand = _paired(prod["frozen"], cand["frozen"])
    metric = prod["frozen"].metric
    frozen = Criterion(
        "frozen", metric, f_prod, f_cand, "not_worse", s.tolerance, min_examples=s.min_examples, fixed=True
    )
    scored = "feedback" in prod and (
        s.judge is None or len(_paired(prod["feedback"], cand["feedback"])[0]) >= s.min_examples
    )
    if not scored and s.judge is not None and ("feedback" in prod or "unverified" in prod):
        return [frozen]  # the judge's criterion (a hook) is the improvement where the feedback is
    if not scored:
        improve = Criterion(
            "frozen", metric, f_prod, f_cand, "improve", s.margin, min_examples=s.min_examples, fixed=True
        )
        return [improve] if s.margin >= -s.tolerance else [improve, frozen]
    b_prod, b_cand = _paired(prod["feedback"], cand["feedback"])
    improve = Criterion(
        "feedback", prod["feedback"].metric, b_prod, b_cand, "improve", s.margin, min_examples=s.min_examples
    )
    return [improve, frozen]


# More criteria plug in here: each hook gets both references and both models' scored answers, and
# returns criteria (none when its setting is off).
CriterionHook = Callable[[str, str, dict[str, Scored], dict[str, Scored], GateSettings], list[Criterion]]


def judge_criteria(
    production_ref: str, candidate_ref: str, prod: dict[str, Scored], cand: dict[str, Scored], s: GateSettings
) -> list[Criterion]:
    """gate.judge: the judge compares both answers to each held-out question (the frozen set's when
    none were held out), in both orders; a win is 1 for the winner's side, a tie 0 for both, so the
    paired difference is wins minus losses and its interval is exact-score with McNemar's p."""
    if s.judge is None:
        return []

    sets = [k for k in ("feedback", "unverified") if k in prod] or ["frozen"]
    where = "+".join(sets)
    items = [
        PairItem(p["question"], c["prediction"], p["prediction"], reference=p.get("reference"), id=p["id"])
        for k in sets
        for p, c in zip(prod[k].samples, cand[k].samples, strict=True)
    ]
    with Judge(s.judge) as judge:
        judgments = judge.compare(items)
        identity = judge.identity
    values = [j.value for j in judgments]
    bias = position_bias(judgments, s.confidence)
    info = {
        "judge": identity,
        "wins": values.count(1),
        "ties": values.count(0),
        "losses": values.count(-1),
        "position_first_rate": bias.first_rate,
        "position_biased": bias.biased,
    }
    return [
        Criterion(
            "judge",
            f"wins on {where}",
            [float(v < 0) for v in values],
            [float(v > 0) for v in values],
            "improve",
            s.judge_margin,
            "binary",
            s.min_examples,
            fixed=sets == ["frozen"],
            info=info,
        )
    ]


def task_criteria(
    production_ref: str, candidate_ref: str, prod: dict[str, Scored], cand: dict[str, Scored], s: GateSettings
) -> list[Criterion]:
    """gate.tasks: general-ability tasks through lm-evaluation-harness on both models; each fails when
    a drop larger than gate.tasks_tolerance is shown (no significant drop)."""
    if not s.tasks:
        return []
    try:
        from tuneloop.evaluation.lm_eval_harness import compare_on_tasks
    except ImportError as e:
        raise TuneloopError(
            f"gate.tasks needs the general-task evaluation ({e})",
            hint="install lm-evaluation-harness (pip install lm-eval), or remove gate.tasks",
        ) from None
    _, _, paired = compare_on_tasks(
        production_ref, candidate_ref, s.tasks, limit=s.tasks_limit, confidence=s.confidence, device=s.device
    )
    out = []
    for name, t in paired.items():
        base, new = (
            (t.base, t.candidate) if t.higher_is_better else ([-x for x in t.base], [-x for x in t.candidate])
        )
        out.append(
            Criterion(
                f"general:{name}",
                t.metric,
                base,
                new,
                "no_drop",
                s.tasks_tolerance,
                min_examples=1,
                fixed=True,
            )
        )
    return out


HOOKS: list[CriterionHook] = [judge_criteria, task_criteria]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def evaluate_pair(
    production_ref: str, candidate_ref: str, heldout: Path, s: GateSettings, out: Path
) -> GateDecision:
    frozen = read_rows(s.frozen_eval)[: s.max_samples]
    feedback = _jsonl(heldout)
    # held-out questions curation found no trusted reference for (loop/guards.py): the judge's, if any
    unverified = _jsonl(heldout.parent / "unverified.jsonl") if s.judge is not None else []
    prod = scores_of(production_ref, frozen, feedback, s, unverified)
    cand = scores_of(candidate_ref, frozen, feedback, s, unverified)
    criteria = criteria_of(prod, cand, s)
    for hook in HOOKS:
        criteria += hook(production_ref, candidate_ref, prod, cand, s)
    decision = decide(
        criteria,
        s.confidence,
        margin=s.margin,
        tolerance=s.tolerance,
        resamples=s.bootstrap_resamples,
        seed=s.seed,
    )
    means = {
        side: {
            k: {"metric": v.metric, "mean": _round(v.mean), "n": len(v.samples)} for k, v in scored.items()
        }
        for side, scored in (("production", prod), ("candidate", cand))
    }
    decision.extra.update(means)
    report = {
        "production": production_ref,
        "candidate": candidate_ref,
        "outcome": decision.outcome,
        "passed": decision.passed,
        "reason": decision.reason,
        **decision.numbers(),
        "samples": {
            "production": {k: v.samples for k, v in prod.items()},
            "candidate": {k: v.samples for k, v in cand.items()},
        },
    }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    return decision
