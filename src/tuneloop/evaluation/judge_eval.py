"""`tuneloop eval MODEL --baseline OTHER --judge REF`: the two models' answers judged pairwise.

The judge sees each question, its reference answer and both answers (in both orders); the result
sits next to the reference-based metrics in eval.json / eval.md, with how often the judge agrees
with those metrics where they tell the two answers apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config import load_config
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.evaluation.harness import EvalReport
from tuneloop.evaluation.judge import Judge, Judgment, PairItem
from tuneloop.evaluation.judge_config import JudgeConfig
from tuneloop.evaluation.judge_stats import JudgeSummary, agreement, summarize
from tuneloop.models.resolve import resolve_model

# the reference-based metrics the judge's winners are compared with (when the rows have them)
AGREEMENT_METRICS = ("contains_answer", "token_f1")


def load_judge_config(spec: str, rubric_file: Path | None = None) -> JudgeConfig:
    """`--judge`: a model reference (run by our engine) or a YAML file holding a judge config;
    `--judge-rubric FILE` replaces the rubric. Checked before any model loads."""
    if spec.endswith((".yaml", ".yml")) and not Path(spec).expanduser().is_dir():
        config = load_config(JudgeConfig, Path(spec).expanduser())
    else:
        resolve_model(spec)  # an unknown reference fails now, with the usual hint
        config = JudgeConfig(model=spec)
    if rubric_file is not None:
        config.rubric = _read_rubric(rubric_file)
    return config


def _read_rubric(path: Path) -> str:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"--judge-rubric '{path}' cannot be read: {getattr(e, 'strerror', None) or e}",
            hint="a UTF-8 text file saying what makes an answer better",
        ) from None
    if not text.strip():
        raise ConfigError(f"--judge-rubric '{path}' is empty", hint="write what makes an answer better")
    return text.strip()


@dataclass
class JudgeResult:
    summary: JudgeSummary
    judgments: list[Judgment]
    questions: list[str]

    def to_dict(self) -> dict[str, Any]:
        items = [{"question": q, **j.to_dict()} for q, j in zip(self.questions, self.judgments, strict=True)]
        return {**self.summary.to_dict(), "judgments": items}


def judge_reports(
    report: EvalReport, baseline: EvalReport, config: JudgeConfig, confidence: float = 0.95
) -> JudgeResult:
    """The model's answers (a) against the baseline's (b) on the same rows."""
    if report.kind != "sft" or not report.samples:
        raise TuneloopError(
            "--judge compares generated answers, and these rows have none",
            hint="give SFT rows (messages with a user turn and the reference reply)",
        )
    if len(report.samples) != len(baseline.samples):  # the same data and limits give the same rows
        raise TuneloopError("the model and the baseline answered different numbers of rows")
    items = [
        PairItem(m.question, m.prediction, b.prediction, reference=m.reference, id=m.id or str(i))
        for i, (m, b) in enumerate(zip(report.samples, baseline.samples, strict=True))
    ]
    with Judge(config) as judge:
        judgments = judge.compare(items)
        identity, usage = judge.identity, judge.usage.as_dict()
    agreements = []
    for metric in AGREEMENT_METRICS:
        if all(metric in s.scores for s in (*report.samples, *baseline.samples)):
            a = [s.scores[metric] for s in report.samples]
            b = [s.scores[metric] for s in baseline.samples]
            agreements.append(agreement(judgments, a, b, metric))
    summary = summarize(judgments, identity, config.rubric, usage, agreements, confidence)
    return JudgeResult(summary, judgments, [it.question for it in items])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def summary_lines(s: JudgeSummary) -> list[tuple[str, str]]:
    """(what, value) rows shared by eval.md and the console."""
    p, u = s.position, s.usage
    level = f"{100 * s.confidence:g} %"
    bias = (
        "-"
        if p.first_rate is None
        else (
            f"first shown won {p.first_won} of {p.decided} single-order verdicts ({_pct(p.first_rate)}, "
            f"p = {p.p_value:.3g})" + (": position-biased" if p.biased else "")
        )
    )
    rows = [
        ("wins / ties / losses", f"{s.wins} / {s.ties} / {s.losses} of {s.n}"),
        (f"win rate (ties half), {level} CI", f"{s.win_rate:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"),
        ("position bias", bias),
        ("same winner in both orders", _pct(p.consistent)),
        ("no readable verdict", f"{p.invalid} of {2 * s.n} single-order verdicts ({p.retried} asked again)"),
    ]
    for a in s.agreement:
        rows.append(
            (
                f"agrees with {a.metric}",
                f"{a.agree} of {a.differ} items where it differs ({_pct(a.rate)}; judge tie {a.judge_tie}, "
                f"opposite {a.disagree})"
                if a.differ
                else "the metric does not tell the answers apart",
            )
        )
    rows.append(
        (
            "judge cost",
            f"{u['prompts']:.0f} prompts ({u['cached']:.0f} cached), {u['prompt_tokens']:.0f} prompt + "
            f"{u['completion_tokens']:.0f} completion tokens, {u['seconds']:.1f} s",
        )
    )
    return rows


def markdown_section(result: JudgeResult, model: str, baseline: str) -> list[str]:
    s = result.summary
    lines = [
        "## Pairwise judge",
        "",
        f"`{model}` (a) against `{baseline}` (b), judged by `{s.judge}`; each pair is asked in both orders "
        "and has a winner only when both orders agree (else a tie).",
        "",
        "| | |",
        "|---|---|",
    ]
    return lines + [f"| {k} | {v} |" for k, v in summary_lines(s)] + [""]
