"""How often the loop's gate and canary decide wrongly, and how long a canary takes, by simulation.

Every decision goes through the loop's own rules (tuneloop/loop/simulate.py drives canary.judge and
gate.criteria_of + decide), at their defaults unless a row says otherwise:

- canary: rated answers arrive as a Poisson process (50, 200, 1000 an hour over both variants; each on
  the candidate with probability canary.share = 0.1), thumbs-up rate 0.60 for production and 0.60
  (no difference), 0.70 (+10 points) or 0.50 (-10 points) for the candidate; looked at every
  --poll seconds until it promotes, rolls back, or reaches canary.max_wait (24 h);
- the same with a fixed-sample 95 % interval looked at every poll (what the canary is not), to show
  why the canary uses confidence sequences;
- min_feedback: the canary's rule with 1, 10, 30 rated answers per variant required, looked at
  about once per new rating for 3 hours, at thumbs-up rates near 0 or 1 where the normal mixture's
  approximation is weakest: false promotions, and what the minimum costs a +10-point candidate;
- gate: held-out examples scored 0/1 (contains_answer; production 0.60, 20 % of the questions
  answered differently by the two) or token-F1-like in [0, 1], against 400 frozen questions of which
  4 % are answered differently (no true change); and the frozen set's own false rejections of a
  harmless candidate, by its size.

    python benchmarks/loop_decisions_sim.py --sims 500 --poll 60 --out benchmarks/loop_decisions_sim.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneloop.loop.canary import VariantStats
from tuneloop.loop.config import CanarySettings, GateSettings
from tuneloop.loop.simulate import paired_binary_scores, paired_f1_scores, simulate_canary, simulate_gate
from tuneloop.loop.stats import z_value

BASE = 0.60


def canary_row(rate: float, candidate: float, sims: int, poll: float, seed: int, **settings) -> dict:
    s = CanarySettings(production_model="p", candidate_model="c", **settings)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    runs = [simulate_canary(s, BASE, candidate, rate, rng, poll_s=poll) for _ in range(sims)]
    by_evidence = [r for r in runs if "canary.max_wait" not in r.reason]
    promoted = [r for r in runs if r.action == "promote"]
    rolled = [r for r in runs if r.action == "rollback"]
    decided = [r.elapsed_s / 3600 for r in by_evidence]
    return {
        "rated_per_hour": rate, "share": s.share, "candidate_up": candidate, "sims": sims,
        "promote": len(promoted) / sims, "rollback": len(rolled) / sims,
        "rollback_by_evidence": sum(r.action == "rollback" for r in by_evidence) / sims,
        "no_decision_by_max_wait": (sims - len(by_evidence)) / sims,
        "median_hours_to_decision": float(np.median(decided)) if decided else None,
        "p90_hours_to_decision": float(np.quantile(decided, 0.9)) if decided else None,
        "median_candidate_ratings_at_decision": float(np.median([r.candidate_ratings for r in by_evidence]))
        if by_evidence else None,
        "seconds": round(time.perf_counter() - t, 1),
    }  # fmt: skip


@dataclass
class Naive:
    """The rule the canary does not use: a fixed-sample 95 % interval (Agresti-Caffo) at every look."""

    min_feedback: int = 30

    def decide(self, prod: VariantStats, cand: VariantStats) -> str:
        if min(prod.ratings, cand.ratings) < self.min_feedback:
            return "wait"
        q1, q2 = (cand.ups + 1) / (cand.ratings + 2), (prod.ups + 1) / (prod.ratings + 2)
        se = math.sqrt(q1 * (1 - q1) / (cand.ratings + 2) + q2 * (1 - q2) / (prod.ratings + 2))
        z = z_value(0.95)
        return "promote" if q1 - q2 - z * se > 0 else "rollback" if q1 - q2 + z * se < 0 else "wait"


def naive_row(rate: float, sims: int, poll: float, seed: int, share: float, hours: float) -> dict:
    rng = np.random.default_rng(seed)
    promoted = 0
    for _ in range(sims):
        prod, cand, elapsed, rule = VariantStats(), VariantStats(), 0.0, Naive()
        while elapsed < hours * 3600:
            elapsed += poll
            k = int(rng.poisson(rate * poll / 3600))
            if not k:
                continue
            kc = int(rng.binomial(k, share))
            for v, m in ((cand, kc), (prod, k - kc)):
                v.ratings += m
                v.ups += int(rng.binomial(m, BASE))
            verdict = rule.decide(prod, cand)
            if verdict != "wait":
                promoted += verdict == "promote"
                break
    return {"rated_per_hour": rate, "share": share, "sims": sims, "promote": promoted / sims, "hours": hours}


def min_feedback_row(up: float, min_feedback: int, sims: int, seed: int) -> dict:
    """At the start, where counts are small: 200 rated answers an hour, share 0.5, a look every 30 s
    (about one new rating a look) for 3 hours; a +10-point candidate for the time it takes."""
    s = CanarySettings(production_model="p", candidate_model="c", min_feedback=min_feedback, share=0.5,
                       max_wait="3h")  # fmt: skip
    rng = np.random.default_rng(seed)
    same = [simulate_canary(s, up, up, 200, rng, poll_s=30) for _ in range(sims)]
    better = [simulate_canary(s, up, min(up + 0.1, 0.99), 200, rng, poll_s=30) for _ in range(sims // 5)]
    found = [r for r in better if r.action == "promote"]
    return {"thumbs_up_rate": up, "min_feedback": min_feedback, "sims": sims,
            "false_promote": sum(r.action == "promote" for r in same) / sims,
            "false_rollback_by_ratings": sum("shown below" in r.reason for r in same) / sims,
            "plus10_promoted_in_3h": len(found) / len(better),
            "plus10_median_candidate_ratings": float(np.median([r.candidate_ratings for r in found])) if found else None}  # fmt: skip


def gate_row(kind: str, gain: float, heldout: int, sims: int, seed: int, frozen_n: int = 400,
             frozen_discordant: float = 0.04) -> dict:  # fmt: skip
    s = GateSettings(frozen_eval="f.jsonl", feedback_metric="token_f1")
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    outcomes = []
    for _ in range(sims):
        if kind == "contains_answer":
            feedback = paired_binary_scores(heldout, BASE, BASE + gain, 0.2, rng)
        else:
            feedback = paired_f1_scores(heldout, gain, 0.15, rng)
        outcomes.append(
            simulate_gate(s, feedback, paired_binary_scores(frozen_n, 0.7, 0.7, frozen_discordant, rng))
        )
    return {"metric": kind, "gain": gain, "heldout": heldout, "frozen": frozen_n,
            "frozen_discordant": frozen_discordant, "sims": sims,
            "passed": outcomes.count("passed") / sims, "failed": outcomes.count("failed") / sims,
            "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def hours(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=500)
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between looks (the loop's default: 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rates", type=float, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--skip", nargs="*", default=[], choices=["canary", "naive", "min_feedback", "gate"])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    started = time.perf_counter()
    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}",
                    "sims": a.sims, "poll_s": a.poll, "seed": a.seed}  # fmt: skip

    if "canary" not in a.skip:
        rows = []
        for i, (label, cand) in enumerate((("none", BASE), ("+10", BASE + 0.1), ("-10", BASE - 0.1))):
            for j, rate in enumerate(a.rates):
                for share in (0.1, 0.5):
                    row = canary_row(
                        rate, cand, a.sims, a.poll, a.seed + 100 * i + 10 * j + int(share * 10), share=share
                    )
                    rows.append({"truth": label, **row})
                    print(json.dumps(rows[-1]), flush=True)
        result["canary"] = rows
        print(
            "\n| truth | rated/h | share | promoted | rolled back (by evidence) | no decision by 24 h | median time to decision | p90 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['truth']} | {r['rated_per_hour']:g} | {r['share']:g} | {pct(r['promote'])} | "
                  f"{pct(r['rollback'])} ({pct(r['rollback_by_evidence'])}) | {pct(r['no_decision_by_max_wait'])} | "
                  f"{hours(r['median_hours_to_decision'])} | {hours(r['p90_hours_to_decision'])} |")  # fmt: skip

    if "naive" not in a.skip:
        rows = [naive_row(200, a.sims, a.poll, a.seed + 7, share, 24) for share in (0.1, 0.5)]
        result["naive"] = rows
        print("\nno true difference, a fixed-sample 95 % interval looked at every poll for 24 h:")
        for r in rows:
            print(f"  share {r['share']:g}, 200 rated/h: false promotions {pct(r['promote'])}")

    if "min_feedback" not in a.skip:
        rows = [
            min_feedback_row(up, mf, a.sims, a.seed + 11) for up in (0.05, 0.5, 0.9) for mf in (1, 10, 30)
        ]
        result["min_feedback"] = rows
        print(
            "\n| thumbs-up rate | min_feedback | false promotions | false rollbacks (ratings) | +10: promoted in 3 h | +10: candidate ratings at promotion (median) |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['thumbs_up_rate']:g} | {r['min_feedback']} | {pct(r['false_promote'])} | "
                  f"{pct(r['false_rollback_by_ratings'])} | {pct(r['plus10_promoted_in_3h'])} | "
                  f"{r['plus10_median_candidate_ratings']} |")  # fmt: skip

    if "gate" not in a.skip:
        rows = []
        for kind in ("contains_answer", "token_f1"):
            for gain in (0.0, 0.1, -0.1):
                for n in (30, 100, 300):
                    rows.append(
                        gate_row(
                            kind, gain, n, a.sims if kind == "contains_answer" else a.sims // 2, a.seed + n
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
        for frozen_n, disc in ((58, 0.04), (200, 0.06), (400, 0.04), (1000, 0.04)):
            # a held-out gain the gate always sees: what is left is the frozen set's false rejections
            rows.append(gate_row("contains_answer", 0.2, 300, a.sims, a.seed + frozen_n, frozen_n, disc))
        result["gate"] = rows
        print(
            "\n| held-out metric | true gain | held-out n | frozen n (answered differently) | passed | rejected |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['metric']} | {r['gain']:+g} | {r['heldout']} | {r['frozen']} ({pct(r['frozen_discordant'])}) | "
                  f"{pct(r['passed'])} | {pct(r['failed'])} |")  # fmt: skip

    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{result['seconds']} s")
    if a.out:  # a run of some parts (--skip) updates those in an earlier file
        earlier = json.loads(a.out.read_text()) if a.out.is_file() else {}
        a.out.write_text(json.dumps({**earlier, **result}, indent=2))


if __name__ == "__main__":
    main()
