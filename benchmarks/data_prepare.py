"""Throughput of `tuneloop data prepare`: MB/s and documents/s, 1 worker vs N, time per stage.

Three corpora, each run once per worker count in a fresh interpreter:
- generated: a deterministic mixed English/Chinese corpus with a planted share of near-duplicates
  (a copy of an earlier document with a few words changed). Its English has a 37-word vocabulary,
  which flatters the tokenizer's pre-token cache: it is the upper bound, not the typical case.
- english: real technical English, the docs (METADATA, .md, .rst, .txt) and code (.py) of the
  installed packages (`pii_corpus.py`), one document per file.
- chinese: real Chinese, the system's zh_CN message catalogues (about 2 MB on Debian).
`--pii-before` also runs 1 worker with the PII detectors from before issue 25 (`pii_legacy.py`),
interleaved with the current ones on the same corpus, for a ratio that a busy machine affects alike.
`--before REF` also runs 1 worker on the `src/` of a git revision (`git archive REF src`, put
first on PYTHONPATH), alternating with the working tree `--repeats` times per corpus: a before/after
ratio per stage that a busy machine affects alike. Outputs must be identical (fingerprints).
`--tokenizer-alone` times the encoding alone of each corpus (one thread): `tokenizers`' batch
encoding, and the ids `data prepare` uses (tiktoken where exact, `tiktoken_bpe.py`): the ceilings
of the chunk+tokenize stage.

    python benchmarks/data_prepare.py --mb 200 --real-mb 10 --workers 1 2 --pii-before --tokenizer-alone
    python benchmarks/data_prepare.py --corpora english chinese --before 2d311ec^ --repeats 3 --workers 1
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

sys.path.insert(0, str(Path(__file__).parent))

import pii_corpus

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


def write_real(folder: Path, docs: list[str], per_file: int = 50) -> dict:
    """Real documents as JSONL files of `per_file` documents each."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i in range(0, len(docs), per_file):
        with (folder / f"part-{i // per_file:04d}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[i : i + per_file])
    return {"documents": len(docs), "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def real_english(mb: float) -> list[str]:
    return pii_corpus.english_docs(int(mb * 0.7e6)) + pii_corpus.english_docs(int(mb * 0.3e6), "code")


def run(
    corpus: Path, out: Path, workers: int, tokenizer: str, pii_impl: str = "tuneloop", src: Path | None = None
) -> dict:
    """One `prepare` in a fresh interpreter, so no run inherits another's warm caches or loaded tokenizer.

    `src`: a `src/` folder to import tuneloop from instead of the working tree's (`--before`).
    """
    cmd = [sys.executable, __file__, "--one", str(workers), "--tokenizer", tokenizer]
    cmd += ["--corpus-dir", str(corpus), "--out-dir", str(out), "--pii-impl", pii_impl]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkout_src(ref: str, folder: Path) -> Path:
    """The `src/` tree of git revision `ref`, extracted under `folder` (`git archive`, no worktree)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def _use_legacy_pii() -> None:
    """Make the PII step use the detectors from before issue 25 (forked workers inherit this)."""
    import pii_legacy

    from tuneloop.data import pii

    def legacy_spans(text: str, types=None) -> list:
        out: list = []
        for det in pii_legacy.DETECTORS:
            if types is not None and det.type not in types:
                continue
            for m in det.pattern.finditer(text):
                if det.valid(m.group()) and all(m.end() <= s.start or m.start() >= s.end for s in out):
                    out.append(pii.Span(m.start(), m.end(), det.type))
        return sorted(out)

    pii.find_spans = legacy_spans


def tokenizer_alone(corpus: Path, tokenizer: str) -> dict[str, float]:
    """Seconds to encode every document of `corpus` in batches of 64, one thread: with `tokenizers`, and
    with what `data prepare` uses (`_ByteLevel.encode_ids`: tiktoken where exact), alternating 3 times."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tuneloop.data.chunk import _byte_level, load_tokenizer, tokenizer_path

    path = tokenizer_path(tokenizer)
    tok, fast = load_tokenizer(path), _byte_level(path)
    texts = [
        json.loads(line)["text"] for p in sorted(corpus.glob("*.jsonl")) for line in p.open(encoding="utf-8")
    ]
    encoders = {"tokenizers": lambda batch: tok.encode_batch_fast(batch, add_special_tokens=False)}
    if fast is not None and fast.tt is not None:
        encoders["data prepare (tiktoken)"] = fast.encode_ids
    best: dict[str, float] = {}
    for _ in range(3):
        for name, encode in encoders.items():
            t = time.perf_counter()
            for i in range(0, len(texts), 64):
                encode(texts[i : i + 64])
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    return best


def run_here(corpus: Path, out: Path, workers: int, tokenizer: str, pii_impl: str) -> dict:
    from tuneloop.data import DataConfig, prepare

    if pii_impl == "legacy":
        _use_legacy_pii()
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
        "pii": {k: v for k, v in manifest["pii"].items() if k != "mode"},
        "pii_impl": pii_impl,
    }


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _table(name: str, results: list[dict]) -> None:
    print(f"\n{name}:")
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
        print(
            f"workers={r['workers']}: removed {r['removed']}, PII {r['pii']}, rows {r['rows']}, {r['fingerprint']}"
        )
    print(f"identical outputs across worker counts: {len({r['fingerprint'] for r in results}) == 1}")


def _revision_table(ref: str, revision: dict[str, list[tuple[dict, dict]]]) -> None:
    stages = ("read+clean+pii+minhash", "chunk+tokenize")
    print(f"\n{ref} (before) vs the working tree (now), 1 worker, alternating runs (s; ratio = before/now):")
    print(
        "| corpus | run | before: stage 1 | now: stage 1 | ratio | before: chunk | now: chunk | ratio "
        "| before: wall (MB/s) | now: wall (MB/s) | ratio | same output |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, pairs in revision.items():
        for i, (old, new) in enumerate(pairs):
            cells = []
            for stage in stages:
                so, sn = old["stages"][stage], new["stages"][stage]
                cells.append(f"{so:.1f} | {sn:.1f} | {so / sn:.2f}x")
            print(
                f"| {name} | {i + 1} | {' | '.join(cells)} | {old['seconds']} ({old['mb_s']}) "
                f"| {new['seconds']} ({new['mb_s']}) | {old['seconds'] / new['seconds']:.2f}x "
                f"| {old['fingerprint'] == new['fingerprint']} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=200, help="size of the generated corpus")
    ap.add_argument("--real-mb", type=float, default=10, help="real English text (70%% docs, 30%% code)")
    ap.add_argument("--corpora", nargs="+", default=["generated", "english", "chinese"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--pii-before", action="store_true", help="also 1 worker with the pre-issue-25 detectors")
    ap.add_argument("--repeats", type=int, default=1, help="with --pii-before/--before: alternating runs")
    ap.add_argument("--before", metavar="REF", help="also 1 worker on git revision REF's src/, alternating")
    ap.add_argument("--tokenizer-alone", action="store_true", help="also time the tokenizer by itself")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tuneloop-bench-data"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run on an existing corpus
    ap.add_argument("--corpus-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--pii-impl", default="tuneloop", help=argparse.SUPPRESS)
    ap.add_argument("--alone", type=Path, help=argparse.SUPPRESS)  # internal: tokenizer alone on a corpus
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_here(args.corpus_dir, args.out_dir, args.one, args.tokenizer, args.pii_impl)))
        return
    if args.alone:
        print(json.dumps(tokenizer_alone(args.alone, args.tokenizer)))
        return
    corpora = {}
    for name in args.corpora:
        folder = args.dir / name
        if name == "generated":
            if folder.exists():
                shutil.rmtree(folder)
            info = generate(folder, args.mb)
        elif name == "english":
            info = write_real(folder, real_english(args.real_mb))
        elif name == "chinese":
            docs = pii_corpus.chinese_docs(int(args.real_mb * 1e6))
            if not docs:
                print("chinese: no zh_CN message catalogues under /usr/share/locale, skipped")
                continue
            info = write_real(folder, docs)
        else:
            raise SystemExit(f"--corpora: unknown corpus {name!r} (generated, english, chinese)")
        corpora[name] = folder
        print(f"{name}: {info['bytes'] / 1e6:.1f} MB, {info['documents']} docs", flush=True)
    load_before = _load()
    results: dict[str, list[dict]] = {}
    before: dict[str, list[tuple[dict, dict]]] = {}
    revision: dict[str, list[tuple[dict, dict]]] = {}
    alone: dict[str, dict[str, float]] = {}
    base_src = checkout_src(args.before, args.dir / "before-src") if args.before else None
    for name, folder in corpora.items():
        results[name] = []
        for w in args.workers:
            results[name].append(run(folder, args.dir / f"out-{name}-{w}", w, args.tokenizer))
            print(name, json.dumps(results[name][-1]), flush=True)  # partial results survive a time limit
        if args.pii_before:
            for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
                pair = tuple(
                    run(folder, args.dir / f"out-{name}-{impl}", 1, args.tokenizer, impl)
                    for impl in ("legacy", "tuneloop")
                )
                before.setdefault(name, []).append(pair)
                print(name, "before/after", json.dumps(pair), flush=True)
        if base_src is not None:
            for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
                pair = (
                    run(folder, args.dir / f"out-{name}-before", 1, args.tokenizer, src=base_src),
                    run(folder, args.dir / f"out-{name}-now", 1, args.tokenizer),
                )
                revision.setdefault(name, []).append(pair)
                print(name, f"{args.before} / now", json.dumps(pair), flush=True)
        if args.tokenizer_alone:
            cmd = [sys.executable, __file__, "--alone", str(folder), "--tokenizer", args.tokenizer]
            alone[name] = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
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
    for name, rs in results.items():
        _table(name, rs)
    if before:
        print(
            "\nPII detectors before issue 25 vs now, 1 worker, alternating runs (stage = read+clean+pii+minhash):"
        )
        print(
            "| corpus | run | before: stage s | now: stage s | stage ratio | before: wall s | now: wall s | PII before | PII now |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, pairs in before.items():
            for i, (old, new) in enumerate(pairs):
                so, sn = old["stages"]["read+clean+pii+minhash"], new["stages"]["read+clean+pii+minhash"]
                print(
                    f"| {name} | {i + 1} | {so:.1f} | {sn:.1f} | {so / sn:.2f}x | {old['seconds']} | {new['seconds']} | {old['pii']} | {new['pii']} |"
                )
    if revision:
        _revision_table(args.before, revision)
    for name, timings in alone.items():
        mb = sum(p.stat().st_size for p in corpora[name].iterdir()) / 1e6
        for encoder, seconds in timings.items():
            print(
                f"encoding alone ({name}, {encoder}, one thread, batches of 64, best of 3): "
                f"{seconds:.1f} s, {mb / seconds:.2f} MB/s"
            )


if __name__ == "__main__":
    main()
