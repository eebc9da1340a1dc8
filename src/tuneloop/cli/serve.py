"""`tuneloop serve` (the OpenAI-compatible gateway) and `tuneloop keys` (its API keys).

tuneloop serve --model smollm2-135m-instruct --port 8000 --no-auth
tuneloop serve --config serve.yaml limits.max_n=4
tuneloop keys create --name ci --scopes inference,feedback --rpm 60
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.models.formats import require_complete, require_format

console = Console()
keys_app = typer.Typer(
    help="API keys of the serving gateway: create (shown once), list, revoke.", no_args_is_help=True
)
DB = typer.Option(None, "--database-url", help="Key database (default: SQLite in TUNELOOP_HOME/serve).")


def _require_serve_extra() -> None:
    for module, package in (
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("prometheus_client", "prometheus-client"),
    ):
        try:
            __import__(module)
        except ImportError:
            raise missing_extra(package, "serve") from None


def serve(
    overrides: list[str] = typer.Argument(
        None, help="key=value overrides of the config, e.g. limits.max_n=4."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="serve.yaml (models, auth, limits, log)."),
    model: str = typer.Option(None, "--model", "-m", help="Serve one model reference (instead of --config)."),
    name: str = typer.Option(None, "--name", help="Served name of --model (default: the reference)."),
    host: str = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default 8000)."),
    kv_cache_gib: float = typer.Option(None, "--kv-cache-gib", min=0.001, help="KV-cache size of --model."),
    engine_process: bool = typer.Option(
        None,
        "--engine-process/--no-engine-process",
        help="Step --model's engine in its own process (no GIL shared with HTTP). Default: on for CUDA.",
    ),
    max_num_seqs: int = typer.Option(None, "--max-num-seqs", min=1, help="Sequences per engine step."),
    max_num_batched_tokens: int = typer.Option(
        None, "--max-num-batched-tokens", min=1, help="Tokens per engine step (prompt chunks + decodes)."
    ),
    max_model_len: int = typer.Option(None, "--max-model-len", min=1, help="Context of one request."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default auto)."),
    dtype: str = typer.Option(None, "--dtype", help="auto, bfloat16, float16 or float32."),
    max_loras: int = typer.Option(None, "--max-loras", min=1, help="Adapters loaded at once."),
    max_lora_rank: int = typer.Option(None, "--max-lora-rank", min=1, help="Largest adapter rank."),
    enforce_eager: bool = typer.Option(None, "--enforce-eager", help="No CUDA graphs (as vLLM's flag)."),
    quantization: str = typer.Option(None, "--quantization", help="none or int8 (weight-only)."),
    prefill_attention: str = typer.Option(None, "--prefill-attention", help="auto, padded or varlen."),
    log_json: bool = typer.Option(False, "--log-json", help="Server logs as one JSON object per line."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Accept requests without API keys (local use only)."
    ),
) -> None:
    """Serve models behind an OpenAI-compatible API (chat, completions, streaming, metrics, feedback)."""
    _require_serve_extra()
    entry = None
    engine = {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "max_model_len": max_model_len,
        "device": device,
        "dtype": dtype,
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
        "enforce_eager": enforce_eager,
        "quantization": quantization,
        "prefill_attention": prefill_attention,
        "kv_cache_gib": kv_cache_gib,
    }
    engine = {k: v for k, v in engine.items() if v is not None}
    if model:
        entry = {"name": name or model, "model": model, "engine": engine}
        if engine_process is not None:
            entry["engine_process"] = engine_process
    elif engine or engine_process is not None:
        raise TuneloopError(
            "engine flags (--max-num-seqs, --kv-cache-gib, ...) apply to --model",
            hint="with --config, set them in the model's `engine:` block or as models.N.engine.KEY=VALUE",
        )
    cfg = _config(config, entry, list(overrides or []), host, port, no_auth)
    # the serve extra (fastapi, uvicorn): loaded when serving, so the CLI starts without it
    import uvicorn

    from tuneloop.serve import create_app

    if not cfg.models:
        raise TuneloopError("nothing to serve", hint="give --model REF or a --config with a `models:` list")
    _check_formats(cfg)
    console.print(f"serving {', '.join(m.name for m in cfg.models)} on http://{cfg.host}:{cfg.port}/v1")
    if cfg.auth.enabled and not _store(cfg.auth.database_url).list():
        console.print(
            "[yellow]no API keys yet:[/] create one with `tuneloop keys create --name NAME` (or use --no-auth)"
        )
    from tuneloop.serve.logs import log_config  # the serve extra, as above

    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        log_config=log_config(log_json),
        timeout_graceful_shutdown=30,
    )


def _check_formats(cfg: Any) -> None:
    """Every local model is resolved and its format checked before the server starts: an export the
    engine cannot run (ONNX, packed int4, pre-quantized) fails by name here, not as a startup traceback."""
    from tuneloop.serve.backends import resolve_entry  # the serve extra: loaded when serving

    for m in cfg.models:
        if m.model is None:  # an upstream: nothing local to check
            continue
        where = resolve_entry(m)
        for folder, ref in ((where.folder, m.model), (where.adapter, m.lora or m.model)):
            if folder is not None:
                require_format(folder, ref, "serve")
                require_complete(folder, ref)


def _config(
    path: Path | None,
    model: dict[str, Any] | None,
    overrides: list[str],
    host: str | None,
    port: int | None,
    no_auth: bool,
) -> Any:
    from tuneloop.serve import ServeConfig  # the serve extra (tuneloop.serve loads fastapi)

    def add_model(data: dict[str, Any]) -> None:  # before the overrides: models.N.engine.KEY=... reaches it
        if model:
            data["models"] = [*(data.get("models") or []), model]

    cfg = load_config(ServeConfig, path, overrides, edit=add_model)
    updates: dict[str, Any] = {}
    if host:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if no_auth:
        updates["auth"] = {**cfg.auth.model_dump(), "enabled": False}
    return load_config(ServeConfig, {**cfg.model_dump(), **updates}) if updates else cfg


def _store(url: str | None) -> Any:
    from tuneloop.serve.keys import KeyStore  # the serve extra (sqlalchemy)

    return KeyStore(url)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", "-n", help="Who or what uses the key."),
    scopes: str = typer.Option(
        "inference,feedback", "--scopes", help="Comma list of inference, feedback, admin."
    ),
    models: str = typer.Option("*", "--models", help="Comma list of served names the key may use (* = all)."),
    rpm: int = typer.Option(None, "--rpm", min=1, help="Requests per minute."),
    tpm: int = typer.Option(None, "--tpm", min=1, help="Tokens (prompt + completion) per minute."),
    expires: float = typer.Option(None, "--expires", min=0.001, help="Days until the key expires."),
    database_url: str = DB,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    key, record = _store(database_url).create(name, _csv(scopes), _csv(models), rpm, tpm, expires)
    console.print(f"created key [bold]{record.id}[/] ({name}); store it now, it is not shown again:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    database_url: str = DB, as_json: bool = typer.Option(False, "--json", help="Machine-readable.")
) -> None:
    """List keys (ids, scopes, limits, last use); secrets are never shown."""
    keys = _store(database_url).list()
    if as_json:
        typer.echo(json.dumps([asdict(k) for k in keys], indent=2, default=str))
        return
    table = Table("id", "name", "scopes", "models", "rpm", "tpm", "expires", "last used", "revoked")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            ",".join(k.scopes),
            ",".join(k.models),
            str(k.rpm or ""),
            str(k.tpm or ""),
            _when(k.expires_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id (from `tuneloop keys list`)."), database_url: str = DB
) -> None:
    """Revoke a key; requests with it fail with 401 from now on."""
    record = _store(database_url).revoke(key_id)
    console.print(f"revoked key {record.id} ({record.name})")


def _when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else ""


feedback_app = typer.Typer(
    help="Feedback collected by the gateway (POST /v1/feedback).", no_args_is_help=True
)


@feedback_app.command("export")
def feedback_export(
    out: Path = typer.Option(None, "--out", "-o", help="JSONL file to write (default: stdout)."),
    log_path: Path = typer.Option(
        None, "--log", help="Request log (default: TUNELOOP_HOME/serve/requests.jsonl)."
    ),
    database_url: str = DB,
) -> None:
    """Write every rating with its logged request and answer, one JSON line each (for the loop)."""
    # the serve extra (sqlalchemy): loaded when run
    from tuneloop.interactions.feedback import FeedbackStore, export
    from tuneloop.interactions.requestlog import default_path

    rows = export(FeedbackStore(database_url), log_path or default_path())
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if out is None:
        for line in lines:
            typer.echo(line)
        return
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    console.print(f"wrote {len(lines)} feedback rows to {out}")
