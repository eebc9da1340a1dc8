"""`tuneloop data prepare --engine spark`: rows/s on local[1] vs local[2], and what the driver holds.

The corpus is `data_prepare.py`'s generated one (English/Chinese, ~10 % planted near-duplicates),
in files of equal size, so a larger corpus is more partitions of the same size. Each run is a fresh
interpreter (one SparkContext per process) writing to a fresh output folder. While it runs, a thread
samples every 50 ms the resident memory of the Python driver and of the driver JVM (in local mode
the JVM also runs the executors' shuffle, so its heap is capped by spark.driver.memory, 2 GB); the
Python workers (children of the JVM) are not the driver and are not counted. The peak of the
Python driver is what the driver holds of the data: with shards written by the executors it should
not grow with the corpus (only counts, dedup decisions and token histograms come back).

    python benchmarks/data_spark_scale.py --mb 3 12 --mb-per-file 0.5 --shard-rows 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import psutil
from data_prepare import generate

ROOT = Path(__file__).parents[1]


class PeakRSS:
    """Peak RSS of this process and of its java child (the driver JVM), sampled in a thread."""

    def __init__(self, every: float = 0.05):
        self.me = psutil.Process()
        self.peak = {"python_driver_mb": 0.0, "driver_jvm_mb": 0.0}
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _jvm_rss(self) -> float:
        """RSS of the java children, found anew each time: spark-submit first runs a short-lived
        launcher JVM, then the driver JVM."""
        total = 0
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "java":
                    total += child.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample("python_driver_mb", self.me)
            self.peak["driver_jvm_mb"] = max(self.peak["driver_jvm_mb"], self._jvm_rss())
            time.sleep(self.every)

    def _sample(self, key: str, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak[key] = max(self.peak[key], proc.memory_info().rss / 2**20)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(corpus: Path, out: Path, master: str, tokenizer: str, shard_rows: int) -> dict:
    """One prepare on Spark in this process (called through `--one`)."""
    from tuneloop.data import DataConfig, prepare
    from tuneloop.data.executors.spark import spark_context

    cfg = DataConfig(tokenizer=tokenizer, output={"shard_rows": shard_rows})
    with PeakRSS() as rss:
        spark_context(master)  # JVM start-up is not part of the throughput
        idle = dict(rss.peak)
        t = time.perf_counter()
        manifest = prepare([str(corpus)], out, cfg, engine="spark", spark_master=master)
        seconds = time.perf_counter() - t
    rows = manifest["counts"]["train_rows"] + manifest["counts"]["val_rows"]
    return {
        "master": master,
        "seconds": round(seconds, 2),
        "documents_read": manifest["counts"]["read"],
        "rows": rows,
        "rows_per_s": round(rows / seconds, 1),
        "docs_per_s": round(manifest["counts"]["read"] / seconds, 1),
        "removed": manifest["removed"],
        "shards": {s: len(v) for s, v in manifest["shards"].items()},
        "fingerprint": manifest["fingerprint"],
        "stages": manifest["run"]["seconds"],
        "peak_python_driver_mb": round(rss.peak["python_driver_mb"], 1),
        "peak_driver_jvm_mb": round(rss.peak["driver_jvm_mb"], 1),
        "python_driver_after_start_mb": round(idle["python_driver_mb"], 1),
    }


def spawn(corpus: Path, out: Path, master: str, tokenizer: str, shard_rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, "--one", master, "--corpus", str(corpus), "--out", str(out)]
    cmd += ["--tokenizer", tokenizer, "--shard-rows", str(shard_rows)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"run failed ({master}, {corpus}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[8, 32], help="corpus sizes (MB of JSONL)")
    ap.add_argument("--mb-per-file", type=float, default=1.0, help="one input file = one partition")
    ap.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--shard-rows", type=int, default=1000, help="rows per output shard")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.corpus, args.out, args.one, args.tokenizer, args.shard_rows)))
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="spark-scale-"))
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}"
    )
    results = []
    for mb in args.mb:
        corpus = work / f"corpus-{mb:g}mb"
        if not corpus.exists():
            info = generate(corpus, mb, files=max(1, round(mb / args.mb_per_file)))
            print(f"corpus {mb:g} MB: {info}")
        for master in args.masters:
            r = spawn(corpus, work / f"out-{mb:g}-{master}", master, args.tokenizer, args.shard_rows)
            r["mb"] = mb
            results.append(r)
            print(json.dumps(r), flush=True)
    base = {r["mb"]: r for r in results if r["master"] == args.masters[0]}
    print(
        "\n| corpus | master | rows | seconds | rows/s | vs first master | peak Python driver RSS | peak driver JVM RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r["rows_per_s"] / base[r["mb"]]["rows_per_s"]
        print(
            f"| {r['mb']:g} MB | {r['master']} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | "
            f"{ratio:.2f}x | {r['peak_python_driver_mb']} MB | {r['peak_driver_jvm_mb']} MB |"
        )
    same = {r["mb"]: {x["fingerprint"] for x in results if x["mb"] == r["mb"]} for r in results}
    print("fingerprints equal across masters:", all(len(v) == 1 for v in same.values()))
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
