"""Frozen-set protection: how many of acme's training questions curation would drop as paraphrases of
the frozen set (examples/acme-kb/qa/heldout.jsonl), against how many it should.

    python benchmarks/loop_frozen_overlap.py [--json out.json]

Every held-out row rewords a training question (`paraphrase_of`) or asks about its fact in a new
situation (`source_fact`). A training question whose fact has a held-out row is a positive: fed back
as feedback, it would teach the answer the gate checks. A question about a fact with no held-out row
is a negative. Reported per matcher (normalised exact, MinHash, content words, MiniLM embeddings)
and for curation's rule (any of them, with the product-model guard), English and Chinese apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "examples" / "acme-kb" / "qa"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from tuneloop.loop.embed import embedder
    from tuneloop.loop.frozen import FrozenGuard, Protected

    read = lambda f: [json.loads(x) for x in (QA / f).read_text(encoding="utf-8").splitlines() if x.strip()]  # noqa: E731
    train, held = read("train.jsonl"), read("heldout.jsonl")
    fact = lambda i: i.rsplit("-", 1)[0]  # noqa: E731
    covered = {fact(h.get("paraphrase_of") or h.get("source_fact") or "") for h in held}
    t = time.perf_counter()
    guard = FrozenGuard(
        [Protected("frozen set", h["messages"][0]["content"]) for h in held], embedder("minilm")
    )
    build_s = time.perf_counter() - t
    report: dict = {"frozen_questions": len(held), "build_s": round(build_s, 1), "results": {}}
    for lang in ("en", "zh"):
        rows = [r for r in train if r["lang"] == lang]
        hits = [(fact(r["id"]) in covered, guard.match(r["messages"][0]["content"])) for r in rows]
        pos = sum(p for p, _ in hits)
        tp = sum(1 for p, m in hits if p and m)
        fp = sum(1 for p, m in hits if not p and m)
        how: dict[str, int] = {}
        for _, m in hits:
            if m:
                how[m[1]] = how.get(m[1], 0) + 1
        report["results"][lang] = {"questions": len(rows), "positives": pos, "caught": tp, "recall": round(tp / max(1, pos), 3),
                                   "negatives": len(rows) - pos, "false_drops": fp, "matched_by": how}  # fmt: skip
        print(f"{lang}: {tp}/{pos} training questions about frozen facts caught ({tp / max(1, pos):.0%}), "
              f"{fp}/{len(rows) - pos} others dropped; matched by {how}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
