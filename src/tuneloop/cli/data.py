"""`tuneloop data`: turn raw documents into a training-ready dataset folder.

tuneloop data prepare docs/ faq.csv chats.jsonl.gz --out data/v1 --kind sft chunk.max_tokens=1024
tuneloop data synth docs/ --out data/qa --teacher https://api.openai.com/v1 --teacher-model gpt-4o-mini
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.config import load_config
from tuneloop.data.config import DataConfig
from tuneloop.data.manifest import summary_rows
from tuneloop.errors import TuneloopError
from tuneloop.paths import check_writable_dir

app = typer.Typer(
    help="Prepare datasets: clean, deduplicate, redact PII, chunk, split.", no_args_is_help=True
)
console = Console(stderr=True)
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
KINDS = ("pretrain", "sft", "preference")
ENGINES = ("local", "spark")
PII_MODES = ("redact", "drop", "report", "off")


@app.command()
def prepare(
    inputs: list[str] = typer.Argument(
        ..., help="Files, folders, globs or s3:// URLs; trailing key=value items override the config."
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output folder or URL (s3://bucket/prefix, any fsspec URL) for the train/ and val/ "
        "shards (.jsonl + .parquet) and manifest.json (written last).",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="data.yaml (see DataConfig)."),
    kind: str | None = typer.Option(
        None, "--kind", help="pretrain | sft | preference (overrides the config)."
    ),
    engine: str = typer.Option("local", "--engine", help="local (all cores) | spark."),
    spark_master: str = typer.Option(
        "local[*]", "--spark-master", help="Spark master URL for --engine spark."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", min=1, help="Processes for the local engine (default: all cores)."
    ),
    pii: str | None = typer.Option(
        None,
        "--pii",
        help="redact | drop | report (count and show what would be redacted, change nothing) | off; "
        "overrides pii.mode.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON instead of a table."),
) -> None:
    """Read, clean, filter, redact PII, deduplicate, chunk and split INPUT... into a dataset folder."""
    from tuneloop.data.run import prepare as run  # the pipeline needs the data extra (numpy, pyarrow)

    paths, overrides = _split_args(inputs)
    if kind is not None:
        if kind not in KINDS:
            raise TuneloopError(f"--kind '{kind}' is not one of {', '.join(KINDS)}")
        overrides.insert(0, f"kind={kind}")
    if pii is not None:
        if pii not in PII_MODES:
            raise TuneloopError(f"--pii '{pii}' is not one of {', '.join(PII_MODES)}")
        overrides.insert(0, f"pii.mode={pii}")
    if engine not in ENGINES:
        raise TuneloopError(f"--engine '{engine}' is not one of {', '.join(ENGINES)}")
    if not paths:
        raise TuneloopError(
            "no INPUT given", hint="pass files, folders, globs or s3:// URLs before key=value overrides"
        )
    cfg = load_config(DataConfig, config, overrides)
    if "://" not in out:  # a URL is checked by writing a probe object there, also before reading
        check_writable_dir(Path(out), "--out")  # before the inputs are read, not at the first write
    # the library logs skipped inputs; here the report below prints them once, as warnings
    logging.getLogger("tuneloop.data").addHandler(logging.NullHandler())
    logging.getLogger("tuneloop.data").propagate = False
    manifest = run(
        paths, out, cfg, engine=engine, workers=workers, spark_master=spark_master, progress=progress
    )
    if as_json:
        typer.echo(json.dumps(manifest, ensure_ascii=False, indent=2))
        return
    _report(manifest, out)


@app.command()
def synth(
    docs: list[str] = typer.Argument(
        ..., help="Document files, folders or globs; trailing key=value items override the config."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder (train/, val/, manifest.json)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="synth.yaml (see SynthConfig)."),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="Model reference run by our engine (default smollm2-135m-instruct: offline, for trying it "
        "out), or an OpenAI-compatible base URL (http(s)://host/v1) with --teacher-model.",
    ),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help="Model name an upstream serves."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the upstream's API key."
    ),
    questions_per_chunk: int | None = typer.Option(
        None, "--questions-per-chunk", "-q", min=1, help="Questions per chunk (default 3)."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1, help="Chunks in flight: one engine batch, or concurrent requests."
    ),
    max_chunks: int | None = typer.Option(None, "--max-chunks", min=1, help="Only the first N chunks."),
    eval_sets: list[str] = typer.Option(
        [], "--eval", help="Held-out JSONL whose questions must not leak into the rows (repeatable)."
    ),
    guided: bool | None = typer.Option(
        None,
        "--guided/--no-guided",
        help="Ask for the reply's JSON schema as structured output (default on).",
    ),
    judge: str | None = typer.Option(
        None,
        "--judge",
        help="Also ask an LLM judge whether each answer agrees with its chunk: a model reference run "
        "by our engine, or a judge YAML (base_url + model_name for an upstream), as `eval --judge`.",
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming OUT/.synth/progress."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON instead of a table."),
) -> None:
    """Generate question-answer SFT rows from DOCS... with a teacher model: questions of several
    kinds per chunk, answers checked against the chunk, no evaluation question leaked; resumable."""
    from tuneloop.data.synth import SynthConfig  # the data extra (numpy, tokenizers)
    from tuneloop.evaluation.judge_eval import load_judge_config
    from tuneloop.flows.synth import run_synth

    paths, overrides = _split_args(docs)
    flags = {
        "teacher": teacher,
        "teacher_model": teacher_model,
        "api_key_env": api_key_env,
        "questions_per_chunk": questions_per_chunk,
        "concurrency": concurrency,
        "max_chunks": max_chunks,
        "guided": guided,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + overrides
    if not paths:
        raise TuneloopError(
            "no DOCS given", hint="pass the folder of your documents before key=value overrides"
        )
    cfg = load_config(SynthConfig, config, overrides)
    if eval_sets:
        cfg.eval = [*cfg.eval, *eval_sets]
    judge_config = load_judge_config(judge) if judge else None
    check_writable_dir(out, "--out")
    logging.getLogger("tuneloop.data.synth").setLevel(logging.INFO)

    def wave(done: int, total: int) -> None:
        if progress:
            console.print(f"asked the teacher about {done}/{total} chunks", highlight=False)

    result = run_synth(paths, out, cfg, fresh=fresh, on_wave=wave, judge=judge_config)
    if as_json:
        typer.echo(json.dumps(result.manifest, ensure_ascii=False, indent=2))
        return
    _synth_report(result.manifest, out, result.asked, result.seconds)


def _synth_report(m: dict, out: Path, asked: int, seconds: float) -> None:
    c, g = m["counts"], m["grounding"]
    table = Table(title=f"data synth: {m['teacher']}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("chunks (asked this run)", f"{c['chunks']} ({asked})")
    table.add_row("chunks with rows", str(c["chunks_with_rows"]))
    for why, n in m["removed"]["chunks"].items():
        table.add_row(f"  chunks skipped: {why}", str(n))
    table.add_row("candidate rows", str(c["candidate_rows"]))
    for why, n in m["removed"]["rows"].items():
        table.add_row(f"  rows removed: {why}", str(n))
    table.add_row("grounded fraction", f"{g['fraction']:.2f}")
    table.add_row("rows train / val", f"{c['train_rows']} / {c['val_rows']}")
    Console().print(table)
    if asked:
        typer.echo(f"teacher time: {seconds:.1f}s for {asked} chunks")
    typer.echo(f"wrote {out}: train/ and val/ shards, manifest.json  fingerprint {m['fingerprint']}")


def _split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """INPUT... and key=value overrides share the positional arguments; a real path is never an override."""
    paths, overrides = [], []
    for item in items:
        is_override = bool(_OVERRIDE.match(item)) and not os.path.exists(item)
        (overrides if is_override else paths).append(item)
    return paths, overrides


def _pii_examples(manifest: dict) -> None:
    """What the PII step matched, in context, so over-redaction shows at a glance (values masked)."""
    examples = manifest.get("pii_examples", {})
    if not examples:
        return
    verb = "would be redacted" if manifest["pii"]["mode"] in ("report", "off") else "matched"
    typer.echo(f"PII {verb} (first in document order; [TYPE:shape] masks letters as x, digits as 0):")
    for kind, items in examples.items():
        for item in items:
            typer.echo(f"  {kind:9s} {item['doc']}: {item['context']}")


def _report(manifest: dict, out: str) -> None:
    for skip in manifest["skipped"]["items"][:20]:
        line = f":{skip['line']}" if skip["line"] else ""
        console.print(
            f"[yellow]warning:[/] skipped {skip['file']}{line}: {skip['reason']}",
            highlight=False,
            soft_wrap=True,
        )
    if manifest["skipped"]["total"] > 20:
        console.print(
            f"[yellow]warning:[/] ... {manifest['skipped']['total'] - 20} more skipped, see manifest.json"
        )
    table = Table(title=f"data prepare: {manifest['kind']}", show_header=True)
    table.add_column("stage / reason")
    table.add_column("count", justify="right")
    for what, n in summary_rows(manifest):
        table.add_row(what, n)
    Console().print(table)
    _pii_examples(manifest)
    seconds = manifest.get("run", {}).get("seconds", {})
    if seconds:
        typer.echo("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    shards = manifest["shards"]
    typer.echo(
        f"wrote {out}: train/part-*.jsonl ({len(shards['train'])} shards), val/part-*.jsonl "
        f"({len(shards['val'])}), .parquet copies, manifest.json  fingerprint {manifest['fingerprint']}"
    )
