"""The pairwise LLM judge on the acme held-out set: agreement with the reference-based metrics,
position bias, and what judging costs.

The model under test (a) and the baseline (b) answer examples/acme-kb/qa/heldout.jsonl greedily (the
eval harness, as `tuneloop eval`); the judge compares each pair in both orders (`Judge.compare`,
what `tuneloop eval --judge` runs). With `--facts-prompt`, a is the same model as b given, in a
system prompt, the training fact each held-out question paraphrases (a retrieval-augmented stand-in
for a better model, no training needed). Reported:

- win / tie / loss of a against b, the win rate (ties half) with its 95 % Wilson interval;
- position bias: how often the answer shown first won a single-order verdict (exact binomial p);
- agreement with contains_answer and token_f1 on the items where the metric tells a and b apart,
  for the combined verdict and, to show what asking in both orders buys, for each order alone;
- cost: prompts, prompt and completion tokens, judge seconds and tokens/s, all per 100 pairs; as
  ratios against baselines measured in the same run: the judge's seconds over the seconds the two
  models took to answer, and the same judging again (answered by the cache) over the first.

Times are of this machine (CPU unless a GPU is visible); for an upstream judge, cost per 100 pairs
is its tokens per 100 pairs times the provider's price.

    PYTHONPATH=src python3 benchmarks/judge_agreement.py OUT.json --model RUN/model \\
        [--baseline smollm2-135m-instruct] [--judge smollm2-135m-instruct] [--reasons] [--max-samples N]
    PYTHONPATH=src python3 benchmarks/judge_agreement.py OUT.json --model smollm2-135m-instruct --facts-prompt
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneloop.evaluation.harness import evaluate
from tuneloop.evaluation.judge import Judge, JudgeConfig, Judgment, PairItem, agreement, summarize
from tuneloop.evaluation.judge_stats import Agreement

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "examples" / "acme-kb" / "qa" / "heldout.jsonl"
TRAIN = ROOT / "examples" / "acme-kb" / "qa" / "train.jsonl"
METRICS = ("contains_answer", "token_f1")


def single_order(judgments: list, side: int) -> list:
    """The judgments as if only one order had been asked: that order's winner decides."""
    return [Judgment(j.id, j.orders[side].winner, j.orders) for j in judgments]


def with_facts(data: Path, out: Path) -> Path:
    """The held-out rows, each with the training fact it paraphrases in a system prompt."""
    facts = {}
    for line in TRAIN.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        facts[row["id"]] = row["messages"][-1]["content"]
    rows = []
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        fact = facts[row.get("paraphrase_of") or row["source_fact"]]
        system = f"You are the support assistant of Nimbus Labs. Known fact: {fact} Answer with it."
        rows.append({**row, "messages": [{"role": "system", "content": system}, *row["messages"]]})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def per_100(value: float, pairs: int) -> float:
    return round(100 * value / pairs, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--model", required=True, help="the model under test (a), e.g. the acme fine-tune")
    p.add_argument("--baseline", default="smollm2-135m-instruct", help="b")
    p.add_argument("--judge", default="smollm2-135m-instruct", help="a model reference run by our engine")
    p.add_argument("--data", type=Path, default=HELDOUT)
    p.add_argument("--reasons", action="store_true", help="the judge gives reasons before its verdict")
    p.add_argument("--max-tokens", type=int, default=256, help="judge reply budget (with --reasons)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length of a and b")
    p.add_argument(
        "--facts-prompt", action="store_true", help="a gets each question's fact in a system prompt"
    )
    args = p.parse_args()

    t = time.perf_counter()
    kw = dict(max_samples=args.max_samples, max_new_tokens=args.max_new_tokens, batch_size=8, device="auto")
    with tempfile.TemporaryDirectory() as tmp:
        data_a = with_facts(args.data, Path(tmp) / "a.jsonl") if args.facts_prompt else args.data
        a, b = evaluate(args.model, data_a, **kw), evaluate(args.baseline, args.data, **kw)
    answer_s = a.timing["generate_s"] + b.timing["generate_s"]
    print(f"answers: {time.perf_counter() - t:.0f} s", flush=True)
    items = [PairItem(x.question, x.prediction, y.prediction, reference=x.reference, id=x.id)
             for x, y in zip(a.samples, b.samples, strict=True)]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        config = JudgeConfig(model=args.judge, reasons=args.reasons, max_tokens=args.max_tokens,
                             cache=Path(tmp) / "cache.sqlite", log=Path(tmp) / "log.jsonl")  # fmt: skip
        with Judge(config) as judge:
            t = time.perf_counter()
            judgments = judge.compare(items)
            first_s = time.perf_counter() - t
            usage = judge.usage.as_dict()
            t = time.perf_counter()
            again = judge.compare(items)  # the same pairs: every prompt from the cache
            cached_s = time.perf_counter() - t
            assert [j.winner for j in again] == [j.winner for j in judgments]
            assert judge.usage.generated == usage["generated"], "the cache should have answered everything"
            sample_log = [json.loads(x) for x in Path(config.log).read_text().splitlines()[:2]]  # type: ignore[arg-type]
            identity = judge.identity

    def agreements(js: list) -> list[Agreement]:
        return [agreement(js, [s.scores[m] for s in a.samples], [s.scores[m] for s in b.samples], m)
                for m in METRICS if all(m in s.scores for s in (*a.samples, *b.samples))]  # fmt: skip

    summary = summarize(judgments, identity, config.rubric, usage, agreements(judgments))
    n = len(items)
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model": args.model,
        "baseline": args.baseline,
        "judge": identity,
        "data": str(args.data),
        "reasons": args.reasons,
        "facts_prompt": args.facts_prompt,
        "pairs": n,
        "metrics_a": a.metrics,
        "metrics_b": b.metrics,
        "summary": summary.to_dict(),
        "single_order_agreement": {
            "a_shown_first": [x.to_dict() for x in agreements(single_order(judgments, 0))],
            "b_shown_first": [x.to_dict() for x in agreements(single_order(judgments, 1))],
        },
        "cost": {
            "prompts_per_100_pairs": per_100(usage["prompts"], n),
            "prompt_tokens_per_100_pairs": per_100(usage["prompt_tokens"], n),
            "completion_tokens_per_100_pairs": per_100(usage["completion_tokens"], n),
            "judge_seconds_per_100_pairs": per_100(first_s, n),
            "judge_tokens_per_s": round(tokens / usage["seconds"], 1) if usage["seconds"] else None,
            "judge_s_over_answer_s": round(first_s / answer_s, 3) if answer_s else None,
            "cached_s_over_first_s": round(cached_s / first_s, 4) if first_s else None,
            "first_s": round(first_s, 2),
            "cached_s": round(cached_s, 3),
            "answer_s": round(answer_s, 2),
        },
        "sample_log": sample_log,
    }
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    s = summary
    print(f"{n} pairs: a wins {s.wins}, ties {s.ties}, b wins {s.losses}; win rate {s.win_rate:.3f} "
          f"[{s.ci_low:.3f}, {s.ci_high:.3f}]; first shown won {s.position.first_won}/{s.position.decided} "
          f"(p={s.position.p_value:.3g}); invalid {s.position.invalid}")  # fmt: skip
    for x in s.agreement:
        print(
            f"agreement with {x.metric}: {x.agree}/{x.differ} (judge tie {x.judge_tie}, opposite {x.disagree})"
        )
    print(json.dumps(result["cost"], indent=1))


if __name__ == "__main__":
    main()
