"""Injection and abuse detection in curation: precision and recall on a labelled set of paraphrases.

    python benchmarks/loop_injection.py [--json out.json]

The set (tests/loop/data/injection_eval.jsonl) has paraphrased injections (overrides, role changes,
prompt extraction, behaviour planting, credential phishing), abuse, and benign support texts that
use the same verbs ("ignore the amber LED", "forget the old network"). Splits: `dev` (used to pick
the semantic threshold and margin and to write the heuristic patterns), `test` (written with dev,
not tuned on), `fresh` (written after everything was fixed, never looked at while tuning).
Detectors: the literal patterns alone (before issue 18), literal + heuristic patterns (filters.py),
the semantic check alone (injection.py: MiniLM embeddings vs seed intents), and both (curation's
default). Benign references of the semantic check include the acme training answers, as in a loop
that knows its training data. A positive is an injection or abuse text; a detection is any flag.
`prompt-guardrail` (a TF-IDF + logistic regression package on PyPI) is scored too if importable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "loop" / "data" / "injection_eval.jsonl"
KB = ROOT / "examples" / "acme-kb" / "qa" / "train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from tuneloop.loop.embed import embedder
    from tuneloop.loop.filters import TextFilters
    from tuneloop.loop.injection import SemanticFilter

    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    known = [
        json.loads(x)["messages"][-1]["content"]
        for x in KB.read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    t = time.perf_counter()
    semantic = SemanticFilter(embedder("minilm"), benign=known)
    load_s = time.perf_counter() - t
    literal, heuristic = TextFilters(heuristics=False), TextFilters()
    texts = [r["text"] for r in rows]
    t = time.perf_counter()
    semantic.prepare(texts)
    scores = [semantic.score(x) for x in texts]
    per_text_ms = (time.perf_counter() - t) / len(texts) * 1000
    flags = {
        "literal patterns (before)": [literal.check("t", x) is not None for x in texts],
        "literal + heuristic patterns": [heuristic.check("t", x) is not None for x in texts],
        "semantic (MiniLM seeds)": [semantic.flagged(s) for s in scores],
    }
    flags["patterns + semantic (default)"] = [a or b for a, b in zip(flags["literal + heuristic patterns"],
                                                                     flags["semantic (MiniLM seeds)"], strict=True)]  # fmt: skip
    try:
        import guardify

        flags["prompt-guardrail 1.0.1"] = [guardify.detect(x)["label"] == "injection" for x in texts]
    except ImportError:
        pass
    report = {"n": {s: sum(r["split"] == s for r in rows) for s in ("dev", "test", "fresh")},
              "model_load_s": round(load_s, 1), "semantic_ms_per_text": round(per_text_ms, 1), "results": {}}  # fmt: skip
    print(f"{'detector':32} {'split':6} {'P':>5} {'R':>5} {'FP':>3} {'FN':>3}")
    for name, flagged in flags.items():
        for split in ("dev", "test", "fresh", "test+fresh"):
            keep = [i for i, r in enumerate(rows) if r["split"] in split.split("+")]
            tp = sum(1 for i in keep if flagged[i] and rows[i]["label"] != "benign")
            fp = sum(1 for i in keep if flagged[i] and rows[i]["label"] == "benign")
            fn = sum(1 for i in keep if not flagged[i] and rows[i]["label"] != "benign")
            p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
            report["results"].setdefault(name, {})[split] = {"precision": round(p, 3), "recall": round(r, 3),
                                                             "fp": fp, "fn": fn}  # fmt: skip
            print(f"{name:32} {split:6} {p:5.2f} {r:5.2f} {fp:3d} {fn:3d}")
    print(f"model load {load_s:.1f}s, semantic check {per_text_ms:.1f} ms/text (batched)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
