"""`tuneloop logs purge`: the request log's retention, by hand (the server applies it hourly too).

tuneloop logs purge                          # older than log.retention_days (30 by default)
tuneloop logs purge --older-than 7 --dry-run # count what would go
tuneloop logs purge --config serve.yaml      # that server's log path, database and retention
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

from tuneloop import paths
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError

app = typer.Typer(help="The gateway's request log: purge old lines (retention).", no_args_is_help=True)
console = Console()


@app.command("purge")
def purge(
    older_than: float = typer.Option(
        None, "--older-than", min=0.0, help="Days to keep (default: log.retention_days of the config)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be removed; change nothing."),
    config: Path = typer.Option(None, "--config", "-c", help="The server's serve.yaml (log, database)."),
    log_path: Path = typer.Option(
        None, "--log", help="Request log (default: the config's, else TUNELOOP_HOME/serve/requests.jsonl)."
    ),
    database_url: str = typer.Option(
        None, "--database-url", help="Serving database (default: the config's, else SQLite in TUNELOOP_HOME)."
    ),
) -> None:
    """Remove request-log lines (current and rotated files) and answered-response records older than DAYS."""
    # the serve extra (phonenumbers; the gateway's config brings fastapi and torch): only this command
    from tuneloop.interactions.requestlog import default_path
    from tuneloop.interactions.retention import cutoff, purge_log
    from tuneloop.serve.config import ServeConfig

    cfg = load_config(ServeConfig, config, [])
    days = older_than if older_than is not None else cfg.log.retention_days
    if days is None:
        raise TuneloopError(
            f"log.retention_days is null in {config or 'the config'}: nothing says how old is too old",
            hint="pass --older-than DAYS",
        )
    path = log_path or (Path(cfg.log.path).expanduser() if cfg.log.path else default_path())
    cut = cutoff(days)
    report = purge_log(path, cut, dry_run=dry_run)
    before = datetime.fromtimestamp(cut, timezone.utc).replace(tzinfo=None)
    report.responses_removed = _responses(database_url or cfg.auth.database_url, before, dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = report.lines_removed + report.unreadable_removed
    console.print(
        f"{verb} {lines} log line(s) older than {days:g} day(s) from {path}"
        f" ({len(report.files_deleted)} file(s) deleted whole, {len(report.files_rewritten)} rewritten"
        + (f", {report.unreadable_removed} unreadable" if report.unreadable_removed else "")
        + f") and {report.responses_removed} answered-response record(s)",
        soft_wrap=True,  # one line, for scripts and cron mails
        highlight=False,
    )


def _responses(url: str | None, before: datetime, dry_run: bool) -> int:
    from tuneloop.interactions.db import connect  # sqlalchemy: the serve extra
    from tuneloop.interactions.feedback import purge_responses

    if url is None and not (paths.serve_dir(create=False) / "serve.db").is_file():
        return 0  # no server has run here: nothing to purge, and nothing to create
    return purge_responses(connect(url), before, dry_run)
