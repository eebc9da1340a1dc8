"""`tuneloop data synth` with the default model as teacher on the acme-kb docs (issue 24): rows a
second and the grounded fraction, one chunk at a time against `--concurrency` chunks in one engine
batch (the baseline of the same run, same chunks, same teacher), and optionally without guided
decoding (how many replies would not parse).

    PYTHONPATH=src python benchmarks/data_synth.py --out benchmarks/data_synth_cpu.json
        [--max-chunks 4] [--questions 2] [--max-tokens 128] [--concurrency 4] [--unguided]

The 135M default model is for trying the feature offline; its grounded fraction is a floor, not
what a larger hosted teacher (`--teacher URL`) gives.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from tuneloop.data.synth import SynthConfig, synthesize
from tuneloop.flows.synth import EngineTeacher

DOCS = Path(__file__).parents[1] / "examples" / "acme-kb" / "docs"


def run(teacher: EngineTeacher, cfg: SynthConfig, work: Path, name: str) -> dict:
    t0 = time.perf_counter()
    try:
        r = synthesize([str(DOCS)], work / name, cfg, teacher, fresh=True)
    except Exception as e:  # no rows at all is a result too (the small teacher's floor)
        return {"name": name, "error": str(e)[:300], "seconds": round(time.perf_counter() - t0, 1)}
    m = r.manifest
    return {
        "name": name,
        "concurrency": cfg.concurrency,
        "guided": cfg.guided,
        "chunks": m["counts"]["chunks"],
        "rows": r.rows,
        "teacher_seconds": round(r.seconds, 1),
        "rows_per_s": round(r.rows / r.seconds, 3),
        "chunks_per_s": round(m["counts"]["chunks"] / r.seconds, 3),
        "candidate_rows": m["counts"]["candidate_rows"],
        "candidate_rows_per_s": round(m["counts"]["candidate_rows"] / r.seconds, 3),
        "grounded_fraction": m["grounding"]["fraction"],
        "removed": m["removed"],
        "samples": {
            why: [s.get("question") or s.get("error") for s in items[:3]]
            for why, items in m["samples"].items()
        },
        "rows_seen": [
            json.loads(line) for line in (work / name / "train" / "part-00000.jsonl").read_text().splitlines()
        ][:3],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-chunks", type=int, default=4)
    p.add_argument("--questions", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--unguided", action="store_true")
    a = p.parse_args()
    base = dict(
        max_chunks=a.max_chunks,
        questions_per_chunk=a.questions,
        paraphrases=1,
        max_tokens=a.max_tokens,
        answer_chars=160,
        chunk_tokens=256,
        retries=0,
        device="cpu",
    )
    teacher = EngineTeacher(SynthConfig(**base))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("one_chunk_at_a_time", 1, True), ("batched", a.concurrency, True)]
        runs += [("batched_unguided", a.concurrency, False)] if a.unguided else []
        for name, conc, guided in runs:
            results.append(
                run(teacher, SynthConfig(**base, concurrency=conc, guided=guided), Path(tmp), name)
            )
            print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    one, batched = results[0], results[1]
    ratio = (
        batched["rows_per_s"] / one["rows_per_s"]
        if one.get("rows_per_s") and batched.get("rows_per_s")
        else None
    )
    report = {
        "machine": platform.processor() or platform.machine(),
        "settings": {**base, "concurrency": a.concurrency},
        "runs": results,
        "batched_over_one_at_a_time_rows_per_s": round(ratio, 2) if ratio else None,
    }
    a.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
