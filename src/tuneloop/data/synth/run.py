"""`synthesize(docs, out, config, teacher)`: question-answer SFT rows from document chunks.

    chunks (docs.py) -> teacher, in waves of `concurrency` chunks (retried: error or malformed reply)
      -> parse -> grounding check -> progress record per chunk      (resumable, progress.py)
    all records, in chunk order -> duplicate and eval-leak filters -> train/ val/ split by chunk
      -> shards + manifest.json, written like `data prepare`'s (data/layout.py)

The filters that compare rows with each other run at the end over the records in chunk order, so the
dataset is the same whatever the concurrency, and whether or not the run was interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.data.dedup import normalize
from tuneloop.data.destination import Destination, write_split
from tuneloop.data.manifest import fingerprint
from tuneloop.data.output import dump_row
from tuneloop.data.split import choose_val, split_key
from tuneloop.data.synth.config import SynthConfig
from tuneloop.data.synth.docs import Chunk, Corpus, read_chunks
from tuneloop.data.synth.grounding import ChunkIndex
from tuneloop.data.synth.leakage import EvalIndex, load_eval_questions
from tuneloop.data.synth.parse import MalformedReply, parse_reply
from tuneloop.data.synth.progress import ChunkRecord, Progress
from tuneloop.data.synth.prompts import kinds_for, messages, schema_text
from tuneloop.data.synth.teacher import Claim, Teacher, TeacherReply, TeacherRequest, Verifier
from tuneloop.errors import TuneloopError

log = logging.getLogger("tuneloop.data.synth")
RETRY_TEMPERATURE = 0.7  # a retry samples, so a greedy teacher does not repeat the same bad reply
SAMPLES = 5  # examples per rejection reason kept in the manifest


@dataclass
class SynthResult:
    out: Path
    manifest: dict[str, Any]
    asked: int  # chunks sent to the teacher in this run (resumed ones are not)
    seconds: float  # teacher time of this run

    @property
    def rows(self) -> int:
        return self.manifest["counts"]["rows"]


def synthesize(
    docs: list[str],
    out: str | Path,
    cfg: SynthConfig,
    teacher: Teacher,
    *,
    fresh: bool = False,
    on_wave: Callable[[int, int], None] | None = None,
    verifier: Verifier | None = None,
) -> SynthResult:
    """Generate, check and write the dataset; returns its manifest (also `out/manifest.json`).
    With a `verifier`, answers that passed the string checks also need its approval."""
    out = Path(os.path.abspath(os.path.expanduser(out)))
    eval_index = (
        EvalIndex(load_eval_questions(cfg.eval), cfg.leak_ngram, cfg.leak_overlap) if cfg.eval else None
    )
    corpus = read_chunks(docs, cfg.chunk_tokens, cfg.tokenizer, exclude=out, pii=cfg.pii == "redact")
    chunks = corpus.chunks[: cfg.max_chunks] if cfg.max_chunks else corpus.chunks
    settings = {**_settings(cfg), "verifier": verifier.identity if verifier else None}
    progress = Progress(out, settings, fresh)
    todo = [c for c in chunks if not progress.done(c.id, c.sha)]
    start = time.perf_counter()
    for i in range(0, len(todo), cfg.concurrency):
        wave = todo[i : i + cfg.concurrency]
        try:
            records = _ask_wave(wave, cfg, teacher)
            if verifier is not None:
                _verify(records, {c.id: c for c in wave}, verifier)
            progress.save(records)
        except _Fatal as e:  # keep what finished, so the rerun after the fix resumes from there
            if verifier is not None and e.finished:
                _verify(e.finished, {c.id: c for c in wave}, verifier)
            progress.save(e.finished)
            raise TuneloopError(e.message, hint=e.hint) from None
        if on_wave:
            on_wave(min(i + cfg.concurrency, len(todo)), len(todo))
    seconds = time.perf_counter() - start
    manifest = _write(out, chunks, corpus, progress, eval_index, cfg, teacher.identity)
    return SynthResult(out, manifest, len(todo), seconds)


def _settings(cfg: SynthConfig) -> dict[str, Any]:
    """What shapes a chunk's rows: a change to any of these makes old progress another dataset's."""
    keys = (
        "questions_per_chunk",
        "kinds",
        "paraphrases",
        "chunk_tokens",
        "tokenizer",
        "max_tokens",
        "temperature",
        "guided",
        "min_support",
        "answer_chars",
        "pii",
    )
    return {"teacher": cfg.teacher_identity(), **{k: getattr(cfg, k) for k in keys}}


def _ask_wave(wave: list[Chunk], cfg: SynthConfig, teacher: Teacher) -> list[ChunkRecord]:
    """Ask about every chunk of the wave at once; failed chunks are asked again, up to `retries`."""
    records: dict[str, ChunkRecord] = {}
    pending = list(wave)
    for attempt in range(cfg.retries + 1):
        t0 = time.perf_counter()
        replies = teacher.ask([_request(c, cfg, attempt) for c in pending])
        per_chunk = (time.perf_counter() - t0) / max(len(pending), 1)
        fatal = next((r for r in replies if r.fatal), None)
        again = []
        for chunk, reply in zip(pending, replies, strict=True):
            rec = _record(chunk, reply, cfg)
            rec.tries, rec.seconds = attempt + 1, round(per_chunk, 3)
            records[chunk.id] = rec
            if rec.status != "done":
                again.append(chunk)
        if fatal is not None:  # the teacher as a whole is wrong: what finished is kept, the run stops
            raise _Fatal(fatal.error or "teacher failed", [r for r in records.values() if r.status == "done"])
        pending = again
        if not pending:
            break
        log.info("retrying %d chunk(s) (try %d of %d)", len(pending), attempt + 2, cfg.retries + 1)
    return [records[c.id] for c in wave]


class _Fatal(TuneloopError):
    def __init__(self, message: str, finished: list[ChunkRecord]):
        super().__init__(
            message, hint="check --teacher, --teacher-model and the API key; the run can be resumed"
        )
        self.finished = finished


def _verify(records: list[ChunkRecord], chunks: dict[str, Chunk], verifier: Verifier) -> None:
    """Ask the verifier about each question-answer pair once (not each rewording); a rejected pair
    takes its rewordings with it."""
    groups: list[tuple[ChunkRecord, list[dict[str, Any]]]] = []
    for rec in records:
        for row in rec.rows:
            if not row["source"]["paraphrase"] or not groups or groups[-1][0] is not rec:
                groups.append((rec, [row]))
            else:
                groups[-1][1].append(row)
    claims = [
        Claim(rows[0]["messages"][0]["content"], rows[0]["messages"][1]["content"], chunks[rec.chunk].text)
        for rec, rows in groups
    ]
    verdicts = verifier.verify(claims) if claims else []
    for (rec, rows), why in zip(groups, verdicts, strict=True):
        if why is None:
            continue
        rec.rows = [r for r in rec.rows if not any(r is x for x in rows)]
        rec.rejected[why] = rec.rejected.get(why, 0) + len(rows)


def _asked(chunk: Chunk, cfg: SynthConfig) -> list[str]:
    return kinds_for(cfg.questions_per_chunk, cfg.kinds, int(chunk.sha[:8], 16) % len(cfg.kinds))


def _request(chunk: Chunk, cfg: SynthConfig, attempt: int) -> TeacherRequest:
    asked = _asked(chunk, cfg)
    return TeacherRequest(
        messages(chunk.text, chunk.doc, chunk.lang, asked, cfg.paraphrases),
        schema_text(len(asked), asked, cfg.paraphrases, cfg.answer_chars) if cfg.guided else None,
        cfg.max_tokens,
        cfg.temperature if attempt == 0 else max(cfg.temperature, RETRY_TEMPERATURE),
        attempt,
    )


def _record(chunk: Chunk, reply: TeacherReply, cfg: SynthConfig) -> ChunkRecord:
    rec = ChunkRecord(chunk.id, chunk.sha, "done")
    if reply.error is not None:
        rec.status, rec.error = "teacher_error", reply.error
        return rec
    try:
        items, bad = parse_reply(reply.text, _asked(chunk, cfg))
    except MalformedReply as e:
        rec.status, rec.error = "malformed", str(e)
        return rec
    rejected: Counter[str] = Counter({"malformed": bad} if bad else {})
    index = ChunkIndex(chunk.text)
    for qa in items[: cfg.questions_per_chunk]:
        g = index.check(qa.answer, cfg.min_support)
        variants = [qa.question, *qa.paraphrases[: cfg.paraphrases]]
        if not g.grounded:
            rejected["ungrounded"] += len(variants)
            continue
        source = {
            "doc": chunk.doc,
            "chunk": chunk.index,
            "kind": qa.kind,
            "lang": chunk.lang,
            "support": g.support,
        }
        for n, q in enumerate(variants):
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": qa.answer}]
            rec.rows.append({"messages": msgs, "source": {**source, "paraphrase": n > 0}})
    rec.rejected = dict(rejected)
    return rec


# ------------------------------------------------------------------ the dataset


def _write(
    out: Path,
    chunks: list[Chunk],
    corpus: Corpus,
    progress: Progress,
    eval_index: EvalIndex | None,
    cfg: SynthConfig,
    identity: str,
) -> dict[str, Any]:
    removed_rows: Counter[str] = Counter()
    removed_chunks: Counter[str] = Counter()
    samples: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    kept: list[tuple[Chunk, list[str]]] = []
    grounded = 0
    for chunk in chunks:
        rec = progress.records.get(chunk.id)
        if rec is None or rec.sha != chunk.sha:
            removed_chunks["not_asked"] += 1  # an interrupted wave: rerun to ask about it
            continue
        if rec.status != "done":
            removed_chunks[rec.status] += 1
            _sample(samples, rec.status, {"chunk": chunk.id, "error": rec.error})
            continue
        removed_rows.update(rec.rejected)
        grounded += len(rec.rows)
        lines = []
        for row in rec.rows:
            why, detail = _row_filter(row, seen, eval_index)
            if why:
                removed_rows[why] += 1
                _sample(
                    samples, why, {"chunk": chunk.id, "question": row["messages"][0]["content"], **detail}
                )
                continue
            lines.append(dump_row(row))
        if lines:
            kept.append((chunk, lines))
    total = sum(len(lines) for _, lines in kept)
    if not total:
        raise _no_rows(out, removed_chunks, removed_rows, samples)
    val = choose_val(((split_key(cfg.seed, c.id), i) for i, (c, _) in enumerate(kept)), cfg.val_fraction)
    split = {
        "train": [line for i, (_, lines) in enumerate(kept) if i not in val for line in lines],
        "val": [line for i, (_, lines) in enumerate(kept) if i in val for line in lines],
    }
    # answers the string checks or the verifier (judge_*) found unsupported were checked, not grounded
    checked = grounded + sum(
        n for k, n in removed_rows.items() if k == "ungrounded" or k.startswith("judge_")
    )
    counts = {
        "documents": sum(i["documents"] for i in corpus.inputs),
        "chunks": len(chunks),
        "chunks_with_rows": len(kept),
        "rows": total,
        "train_rows": len(split["train"]),
        "val_rows": len(split["val"]),
        "train_chunks": len(kept) - len(val),
        "val_chunks": len(val),
        "candidate_rows": checked + removed_rows["malformed"],
    }
    dest = Destination(str(out))
    dest.start()
    try:
        outputs: dict[str, Any] = {}
        for name, lines in split.items():
            outputs.update(write_split(dest, name, lines, cfg.shard_rows, "sft+source", cfg.parquet))
        outputs = dict(sorted(outputs.items()))
        manifest = {
            "tuneloop_version": __version__,
            "kind": "sft",
            "source": "synth",
            "teacher": identity,
            "fingerprint": fingerprint(outputs),
            "inputs": corpus.inputs,
            "counts": counts,
            "removed": {
                "chunks": dict(sorted((corpus.dropped | removed_chunks).items())),
                "rows": dict(sorted(removed_rows.items())),
            },
            "pii": {"mode": cfg.pii, **corpus.pii},
            "grounding": {
                "checked": checked,
                "grounded": grounded,
                "fraction": round(grounded / checked, 4) if checked else 0.0,
            },
            "samples": samples,
            "skipped": {
                "total": corpus.stats.skipped,
                "items": [s.to_json() for s in corpus.stats.skips[:100]],
            },
            "outputs": outputs,
            "shards": {
                s: sorted(n for n in outputs if n.startswith(f"{s}/") and n.endswith(".jsonl"))
                for s in ("train", "val")
            },
            "config": cfg.model_dump(mode="json"),
        }
        dest.commit(manifest)
    except BaseException:
        dest.abort()
        raise
    return manifest


def _row_filter(row: dict[str, Any], seen: set[str], eval_index: EvalIndex | None) -> tuple[str | None, dict]:
    question = row["messages"][0]["content"]
    key = normalize(question)
    if key in seen:
        return "duplicate", {}
    seen.add(key)
    if eval_index is not None and (hit := eval_index.leak(question)) is not None:
        return "leaked_eval", {"eval_question": hit}
    return None, {}


def _sample(samples: dict[str, list[dict[str, Any]]], why: str, item: dict[str, Any]) -> None:
    have = samples.setdefault(why, [])
    if len(have) < SAMPLES:
        have.append(item)


def _no_rows(out: Path, chunks: Counter[str], rows: Counter[str], samples: dict) -> TuneloopError:
    reasons = ", ".join(f"{k}: {v}" for k, v in (chunks + rows).most_common()) or "none recorded"
    first = next((s[0].get("error") for s in samples.values() if s and s[0].get("error")), None)
    return TuneloopError(
        f"no question-answer rows for {out} (removed: {reasons})"
        + (f"; first error: {first}" if first else ""),
        hint="a teacher that is down or replies badly is retried, then skipped: check it and rerun (the "
        "chunks that worked are kept); ungrounded answers: a larger teacher (--teacher URL) or a lower "
        "min_support",
    )
