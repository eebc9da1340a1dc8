"""General-ability tasks (lm-evaluation-harness) before and after a fine-tune, and the engine adapter
checked against the harness's own transformers model.

Runs tuneloop's shipped tasks (default: the group tuneloop_general = multiple choice and short
answers, English and Chinese) on the base model and on the candidate (e.g. the quickstart's LoRA
fine-tune on the acme corpus), both through our engine (`tuneloop eval --tasks`). Reported:

- per task and metric: base and candidate scores, each with the harness's standard error and a 95 %
  Wilson interval;
- per task, on the primary metric: the paired difference candidate - base on the same questions with
  the gate's interval (loop/stats.py: Newcombe's for 0/1 scores) and McNemar's p: the numbers behind
  "no significant drop on the general tasks";
- with --agreement: the base model again through the harness's `hf` model (transformers, float32
  on the CPU as the engine): the share of examples whose scores and generated answers are
  identical, the largest difference of a choice's log-likelihood, and the engine's time as a ratio
  of the hf model's time measured in the same run.

Times are of this machine (CPU unless a GPU is visible), measured in one process.

    PYTHONPATH=src python3 benchmarks/lm_eval_tasks.py OUT.json --candidate RUN_FOLDER \\
        [--base smollm2-135m-instruct] [--tasks tuneloop_general] [--agreement] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from tuneloop.evaluation.lm_eval_harness import TasksReport, paired_results, run_tasks
from tuneloop.loop.stats import paired_interval


def scores(report: TasksReport) -> dict[str, Any]:
    return {
        name: {
            "n": t.n,
            "primary": t.primary,
            **{
                m: {"value": s.value, "stderr": s.stderr, "low": s.low, "high": s.high, "method": s.method}
                for m, s in t.metrics.items()
            },
        }
        for name, t in report.tasks.items()
    }


def differences(base: TasksReport, candidate: TasksReport) -> dict[str, Any]:
    out = {}
    for name, p in paired_results(base, candidate).items():
        i = paired_interval(p.base, p.candidate, 0.95)
        discordant = sum(b != c for b, c in zip(p.base, p.candidate, strict=True))
        out[name] = {"metric": p.metric, "n": p.n, "diff": i.estimate, "low": i.low, "high": i.high,
                     "method": i.method, "p_value": i.p_value, "discordant": discordant,
                     "per_example": {"ids": p.ids, "base": p.base, "candidate": p.candidate}}  # fmt: skip
    return out


def agreement(engine: TasksReport, hf: TasksReport) -> dict[str, Any]:
    out = {}
    for name, e in engine.tasks.items():
        h = {d.doc_id: d for d in hf.tasks[name].docs}
        same_scores = sum(d.scores == h[d.doc_id].scores for d in e.docs)
        texts = [(d.prediction, h[d.doc_id].prediction) for d in e.docs if d.prediction is not None]
        gaps = [abs(a - b) for d in e.docs if d.loglikelihoods
                for a, b in zip(d.loglikelihoods, h[d.doc_id].loglikelihoods or [], strict=True)]  # fmt: skip
        out[name] = {
            "n": e.n,
            "identical_scores": same_scores / e.n,
            "identical_answers": (sum(a == b for a, b in texts) / len(texts)) if texts else None,
            "max_loglikelihood_gap": max(gaps) if gaps else None,
            "primary_engine": e.metrics[e.primary].value,
            "primary_hf": hf.tasks[name].metrics[e.primary].value,
        }
    return out


def timed(model: str, tasks: list[str], **kwargs: Any) -> tuple[TasksReport, float]:
    started = time.perf_counter()
    report = run_tasks(model, tasks, **kwargs)
    return report, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--candidate", help="the fine-tune: a run folder, adapter or model (none: base only)")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--tasks", default="tuneloop_general", help="comma-separated")
    p.add_argument("--agreement", action="store_true", help="also run the base through the hf model")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    kw = {"limit": a.limit, "device": a.device}

    base, base_s = timed(a.base, tasks, **kw)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": a.device},
        "base": a.base, "candidate": a.candidate, "tasks": tasks, "limit": a.limit,
        "lm_eval_version": base.lm_eval_version,
        "scores": {"base": scores(base)}, "difference": {}, "seconds": {"base_engine": base_s},
    }  # fmt: skip
    if a.candidate:
        candidate, result["seconds"]["candidate_engine"] = timed(a.candidate, tasks, **kw)
        result["scores"]["candidate"] = scores(candidate)
        result["difference"] = differences(base, candidate)
        result["examples"] = {name: [{"id": d.id, "base": d.prediction, "candidate": c.prediction}
                                     for d, c in zip(t.docs[:5], candidate.tasks[name].docs[:5], strict=True)]
                              for name, t in base.tasks.items() if t.docs and t.docs[0].prediction is not None}  # fmt: skip
    if a.agreement:
        hf, hf_s = timed(a.base, tasks, backend="hf", **kw)
        result["agreement"] = agreement(base, hf)
        result["seconds"]["base_hf"] = hf_s
        result["seconds"]["engine_over_hf"] = base_s / hf_s
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for name, d in result["difference"].items():
        b = result["scores"]["base"][name][d["metric"]]
        c = result["scores"]["candidate"][name][d["metric"]]
        print(f"{name:16} {d['metric']:9} n={d['n']:3}  base {b['value']:.3f} [{b['low']:.3f}, {b['high']:.3f}]"
              f"  candidate {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
              f"  diff {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p_value']:.3f}")  # fmt: skip
    for name, t in result["scores"]["base"].items():
        s = t[t["primary"]]
        print(f"{name:16} base {t['primary']} {s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}] n={t['n']}")
    for name, g in result.get("agreement", {}).items():
        print(f"{name:16} engine vs hf: identical scores {g['identical_scores']:.0%}, answers "
              f"{g['identical_answers']}, max loglik gap {g['max_loglikelihood_gap']}")  # fmt: skip
    print(json.dumps(result["seconds"]))


if __name__ == "__main__":
    main()
