"""Labelled PII benchmark: precision and recall per detector on planted PII and look-alikes in real text.

Real English technical text (docs and code of the installed packages) and real Chinese text (the
system's zh_CN message catalogues) get planted sentences at line breaks: PII of every type in
several formats (`pii_planted.positive`) and look-alikes that must stay (`pii_planted.lookalike`).
A detection inside a planted sentence is scored against its label; a detection in the real text
around them is counted as an unplanted replacement and listed, so over-redaction shows at a glance.
The detectors before issue 25 (`pii_legacy.py`) run on the same documents, interleaved with the new
ones for the speed ratio; `--presidio PYTHON` also scores presidio's pattern recognizers (email, IP,
phone, credit card) run by another interpreter that has presidio-analyzer installed.

    python benchmarks/pii_bench.py --en-mb 3 --zh-mb 1 --per-type 400 --per-lookalike 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pii_corpus
import pii_legacy
import pii_planted

from tuneloop.data import pii

TYPES = ("email", "ip", "phone", "bank_card", "id_card", "secret")
Spans = list[tuple[int, int, str]]


@dataclass
class Doc:
    text: str
    labels: Spans = field(default_factory=list)  # planted PII: (start, end, type)
    regions: Spans = field(default_factory=list)  # planted sentences: (start, end, "pos:type" | "neg:class")


def _plant(base: str, snippets: list[tuple[str, str, int, int]], rng: random.Random) -> Doc:
    """`base` with each (tag, text, item start, item end) inserted after a random line break."""
    breaks = [i + 1 for i, c in enumerate(base) if c == "\n"] or [len(base)]
    at = sorted((rng.choice(breaks), k) for k in range(len(snippets)))
    doc, pos, parts, offset = Doc(""), 0, [], 0
    for where, k in at:
        tag, text, s, e = snippets[k]
        parts.append(base[pos:where])
        offset += where - pos
        pos = where
        piece = text + "\n"
        if tag.startswith("pos:"):
            doc.labels.append((offset + s, offset + e, tag[4:]))
        doc.regions.append((offset, offset + len(text), tag))
        parts.append(piece)
        offset += len(piece)
    parts.append(base[pos:])
    doc.text = "".join(parts)
    return doc


def build(args: argparse.Namespace) -> list[Doc]:
    rng = random.Random(args.seed)
    en = pii_corpus.english_docs(int(args.en_mb * 0.7e6)) + pii_corpus.english_docs(
        int(args.en_mb * 0.3e6), "code"
    )
    zh = pii_corpus.chinese_docs(int(args.zh_mb * 1e6))
    if not zh:
        print("no zh_CN message catalogues in /usr/share/locale: Chinese sentences go into English text")
    planted: dict[int, list] = defaultdict(list)  # doc index -> snippets
    bases = en + zh

    def target(chinese: bool) -> int:
        return len(en) + rng.randrange(len(zh)) if chinese and zh else rng.randrange(len(en))

    for kind in TYPES:
        for _ in range(args.per_type):
            chinese = rng.random() < 0.4
            text, s, e = pii_planted.positive(rng, kind, chinese)
            planted[target(chinese)].append((f"pos:{kind}", text, s, e))
    for kind in pii_planted.LOOKALIKES:
        for _ in range(args.per_lookalike):
            text = pii_planted.lookalike(rng, kind)
            planted[target(kind.startswith("zh"))].append((f"neg:{kind}", text, 0, len(text)))
    return [_plant(base, planted.get(i, []), rng) for i, base in enumerate(bases)]


# ---------------------------------------------------------------- detectors under test


def new_spans(text: str) -> Spans:
    return [(s.start, s.end, s.type) for s in pii.find_spans(text)]


def legacy_spans(text: str) -> Spans:
    """The old detectors, each on the original text in their order; a span claimed once."""
    out: Spans = []
    for det in pii_legacy.DETECTORS:
        for m in det.pattern.finditer(text):
            if det.valid(m.group()) and all(m.end() <= s or m.start() >= e for s, e, _ in out):
                out.append((m.start(), m.end(), det.type))
    return sorted(out)


def presidio_spans(docs: list[Doc], python: str) -> tuple[list[Spans], float]:
    """Spans from presidio in another interpreter, and the seconds its analysis took (imports excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "docs.jsonl", Path(tmp) / "spans.jsonl"
        src.write_text("".join(json.dumps(d.text) + "\n" for d in docs))
        script = Path(__file__).parent / "pii_presidio.py"
        done = subprocess.run(
            [python, str(script), str(src), str(dst)], check=True, capture_output=True, text=True
        )
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        return [[tuple(s) for s in json.loads(line)] for line in dst.read_text().splitlines()], seconds


# ---------------------------------------------------------------- scoring


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def score(docs: list[Doc], predictions: list[Spans]) -> dict:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    lookalike_hits: Counter[str] = Counter()
    unplanted: Counter[str] = Counter()
    unplanted_examples: dict[str, list[str]] = defaultdict(list)
    fp_examples: dict[str, list[str]] = defaultdict(list)
    fn_examples: dict[str, list[str]] = defaultdict(list)
    total = Counter(t for d in docs for _, _, t in d.labels)
    for doc, preds in zip(docs, predictions, strict=True):
        matched: set[int] = set()
        for s, e, t in preds:
            region = next((r for r in doc.regions if _overlap(s, e, r[0], r[1])), None)
            if region is None:
                unplanted[t] += 1
                if len(unplanted_examples[t]) < 8:
                    unplanted_examples[t].append(doc.text[max(0, s - 25) : e + 25].replace("\n", " "))
                continue
            hit = next(
                (
                    k
                    for k, (ls, le, lt) in enumerate(doc.labels)
                    if lt == t and k not in matched and _overlap(s, e, ls, le) >= 0.5 * max(e - s, le - ls)
                ),
                None,
            )
            if hit is None:
                fp[t] += 1
                if region[2].startswith("neg:"):
                    lookalike_hits[region[2][4:]] += 1
                if len(fp_examples[t]) < 8:
                    fp_examples[t].append(
                        f"{region[2]}: {doc.text[region[0] : region[1]]!r} -> {doc.text[s:e]!r}"
                    )
            else:
                matched.add(hit)
                tp[t] += 1
        for k, (ls, le, lt) in enumerate(doc.labels):
            if k not in matched and len(fn_examples[lt]) < 8:
                fn_examples[lt].append(repr(doc.text[max(0, ls - 20) : le + 10]))
    per_type = {}
    for t in TYPES:
        p = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else None
        r = tp[t] / total[t] if total[t] else None
        per_type[t] = {"planted": total[t], "tp": tp[t], "fp": fp[t], "precision": p, "recall": r}
    return {
        "per_type": per_type,
        "lookalike_hits": dict(lookalike_hits),
        "unplanted": dict(unplanted),
        "unplanted_examples": dict(unplanted_examples),
        "fp_examples": dict(fp_examples),
        "fn_examples": dict(fn_examples),
    }


def timed(fn, docs: list[Doc], repeats: int) -> tuple[list[Spans], float]:
    best, out = float("inf"), []
    for _ in range(repeats):
        t = time.perf_counter()
        out = [fn(d.text) for d in docs]
        best = min(best, time.perf_counter() - t)
    return out, best


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--en-mb", type=float, default=3.0, help="real English text (70%% docs, 30%% code)")
    ap.add_argument("--zh-mb", type=float, default=1.0, help="real Chinese text")
    ap.add_argument("--per-type", type=int, default=400, help="planted items per PII type")
    ap.add_argument("--per-lookalike", type=int, default=200, help="planted look-alikes per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeats", type=int, default=3, help="timing runs per detector set, interleaved; best kept"
    )
    ap.add_argument("--presidio", metavar="PYTHON", help="an interpreter with presidio-analyzer installed")
    ap.add_argument("--json", type=Path, help="write the full results here")
    args = ap.parse_args()

    docs = build(args)
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    zh_mb = sum(len(d.text.encode()) for d in docs if pii_corpus._CJK.search(d.text[:2000])) / 1e6
    print(
        f"corpus: {len(docs)} documents, {mb:.1f} MB ({zh_mb:.1f} MB Chinese), "
        f"{sum(len(d.labels) for d in docs)} planted PII, {sum(len(d.regions) for d in docs) - sum(len(d.labels) for d in docs)} planted look-alikes"
    )
    results, speed = {}, {}
    for _ in range(args.repeats):  # interleaved: load on a shared machine hits both alike
        for name, fn in (("before (legacy)", legacy_spans), ("tuneloop", new_spans)):
            preds, seconds = timed(fn, docs, 1)
            speed[name] = min(speed.get(name, float("inf")), seconds)
            results[name] = preds
    scored = {name: score(docs, preds) for name, preds in results.items()}
    if args.presidio:
        spans, speed["presidio (patterns)"] = presidio_spans(docs, args.presidio)
        scored["presidio (patterns)"] = score(docs, spans)

    print(f"\nmachine: {os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n| detectors | type | planted | precision % | recall % | false hits |")
    print("|---|---|---|---|---|---|")
    for name, res in scored.items():
        for t, row in res["per_type"].items():
            print(
                f"| {name} | {t} | {row['planted']} | {_pct(row['precision'])} | {_pct(row['recall'])} | {row['fp']} |"
            )
    print("\n| detectors | " + " | ".join(pii_planted.LOOKALIKES) + " |")
    print("|---|" + "---|" * len(pii_planted.LOOKALIKES))
    for name, res in scored.items():
        hits = res["lookalike_hits"]
        print(f"| {name} | " + " | ".join(str(hits.get(k, 0)) for k in pii_planted.LOOKALIKES) + " |")
    print(f"\n(look-alikes changed, of {args.per_lookalike} per class)")
    print("\n| detectors | replacements in the unplanted real text | MB/s (this CPU, shared) |")
    print("|---|---|---|")
    for name, res in scored.items():
        u = res["unplanted"]
        print(
            f"| {name} | {sum(u.values())} ({', '.join(f'{k} {v}' for k, v in sorted(u.items()))}) | {mb / speed[name]:.1f} |"
        )
    print(f"\nspeed ratio tuneloop / before: {speed['before (legacy)'] / speed['tuneloop']:.2f}x")
    new = scored["tuneloop"]
    for t, ex in new["unplanted_examples"].items():
        print(f"\nunplanted {t} (tuneloop), first {len(ex)}:")
        for x in ex:
            print(f"  {x!r}")
    for t, ex in new["fp_examples"].items():
        print(f"\nfalse hits {t} (tuneloop):")
        for x in ex:
            print(f"  {x}")
    for t, ex in new["fn_examples"].items():
        print(f"\nmissed {t} (tuneloop):")
        for x in ex:
            print(f"  {x}")
    if args.json:
        args.json.write_text(
            json.dumps({"mb": mb, "speed_s": speed, "scored": scored}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
