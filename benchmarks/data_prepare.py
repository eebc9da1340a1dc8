"""Throughput of `tuneloop data prepare`: MB/s and documents/s, 1 worker vs N, time per stage.

Generates a deterministic mixed English/Chinese corpus (JSONL files) with a planted share of
near-duplicates (a copy of an earlier document with a few words changed), then runs the local
engine once per worker count on the same corpus and prints a Markdown table for BENCHMARKS.md.

    python benchmarks/data_prepare.py --mb 200 --workers 1 2 --tokenizer smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = [
    "data",
    "model",
    "training",
    "token",
    "language",
    "system",
    "user",
    "answer",
    "question",
    "network",
    "value",
    "layer",
    "learning",
    "result",
    "document",
    "quality",
    "service",
    "account",
    "order",
    "payment",
    "delivery",
    "customer",
    "support",
    "policy",
    "refund",
    "product",
    "release",
    "update",
    "version",
    "server",
    "request",
    "response",
    "latency",
    "memory",
    "cache",
    "storage",
    "cluster",
]
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


def english_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
    return " ".join(words).capitalize() + rng.choice(".!?.")


def chinese_sentence(rng: random.Random) -> str:
    return "".join(rng.choice(HANZI) for _ in range(rng.randint(12, 40))) + rng.choice("。！？，。")


def document(rng: random.Random) -> str:
    make = chinese_sentence if rng.random() < 0.3 else english_sentence
    paragraphs = []
    for _ in range(rng.randint(2, 8)):
        paragraphs.append(
            ("" if make is chinese_sentence else " ").join(make(rng) for _ in range(rng.randint(2, 8)))
        )
    return "\n\n".join(paragraphs)


def near_copy(text: str, rng: random.Random) -> str:
    """An earlier document with ~0.5% of its words (or characters) replaced: about 0.9 shingle Jaccard."""
    units = text.split(" ") if text.count(" ") > len(text) / 12 else list(text)
    for _ in range(max(1, len(units) // 200)):
        units[rng.randrange(len(units))] = rng.choice(WORDS)
    return (" " if text.count(" ") > len(text) / 12 else "").join(units)


def generate(folder: Path, megabytes: float, files: int = 40, dup_share: float = 0.1, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    per_file = target // files
    recent: list[str] = []
    docs = dups = written = 0
    for i in range(files):
        with (folder / f"part-{i:04d}.jsonl").open("w", encoding="utf-8") as f:
            size = 0
            while size < per_file:
                if recent and rng.random() < dup_share:
                    text, dups = near_copy(rng.choice(recent), rng), dups + 1
                else:
                    text = document(rng)
                    recent = ([*recent, text])[-500:]
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode())
                docs += 1
            written += size
    return {"documents": docs, "planted_near_duplicates": dups, "bytes": written}


def run(corpus: Path, out: Path, workers: int, tokenizer: str) -> dict:
    """One `prepare` in a fresh interpreter, so no run inherits another's warm caches or loaded tokenizer."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(workers),
        "--tokenizer",
        tokenizer,
        "--dir",
        str(corpus.parent),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_here(corpus: Path, out: Path, workers: int, tokenizer: str) -> dict:
    from tuneloop.data import DataConfig, prepare

    cfg = DataConfig(tokenizer=tokenizer)
    t = time.perf_counter()
    manifest = prepare([str(corpus)], out, cfg, workers=workers)
    seconds = time.perf_counter() - t
    mb = manifest["run"]["bytes_read"] / 1e6
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "mb_s": round(mb / seconds, 2),
        "docs_s": round(manifest["counts"]["read"] / seconds, 1),
        "stages": manifest["run"]["seconds"],
        "removed": manifest["removed"],
        "rows": manifest["counts"]["train_rows"] + manifest["counts"]["val_rows"],
        "fingerprint": manifest["fingerprint"],
    }


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tuneloop-bench-data"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run on the existing corpus
    args = ap.parse_args()
    corpus = args.dir / "corpus"
    if args.one:
        print(json.dumps(run_here(corpus, args.dir / f"out-{args.one}", args.one, args.tokenizer)))
        return
    if corpus.exists():
        shutil.rmtree(corpus)
    info = generate(corpus, args.mb)
    print(
        f"corpus: {info['bytes'] / 1e6:.1f} MB, {info['documents']} docs, {info['planted_near_duplicates']} planted near-dups"
    )
    load_before = _load()
    results = []
    for w in args.workers:
        results.append(run(corpus, args.dir / f"out-{w}", w, args.tokenizer))
        print(json.dumps(results[-1]), flush=True)  # partial results survive a time limit
    import numpy
    import pyarrow
    import tokenizers

    import tuneloop
    from tuneloop.resources.doctor import cpu_model

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nmachine: {cpu_model()}, {os.cpu_count()} cores ({cpus} usable), Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, tokenizers {tokenizers.__version__}, pyarrow {pyarrow.__version__}, "
        f"tuneloop {tuneloop.__version__}; load average {load_before} before, {_load()} after"
    )
    print(
        "| workers | wall s | MB/s | docs/s | read+clean+pii+minhash s | dedup+split s | chunk+tokenize s | write s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["stages"]
        print(
            f"| {r['workers']} | {r['seconds']} | {r['mb_s']} | {r['docs_s']} | {s['read+clean+pii+minhash']:.1f} | "
            f"{s['dedup+split']:.1f} | {s['chunk+tokenize']:.1f} | {s['write']:.1f} | {results[0]['seconds'] / r['seconds']:.2f}x |"
        )
    for r in results:
        print(f"workers={r['workers']}: removed {r['removed']}, rows {r['rows']}, {r['fingerprint']}")
    same = len({r["fingerprint"] for r in results}) == 1
    print(f"identical outputs across worker counts: {same}")


if __name__ == "__main__":
    main()
