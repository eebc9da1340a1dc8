"""`tuneloop registry`: register runs, list/show/diff versions, promote, roll back, delete.

tuneloop registry register ~/.cache/tuneloop/runs/acme --name acme
tuneloop registry promote acme 3 --alias production
tuneloop registry rollback acme
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.errors import TuneloopError
from tuneloop.models.formats import DESCRIPTION, folder_format
from tuneloop.registry import Registry
from tuneloop.registry.views import describe, list_models
from tuneloop.registry.views import diff as do_diff

app = typer.Typer(
    help="Model registry (MLflow): versions with lineage, aliases (production, candidate, staging), "
    "rollback. References NAME@alias and NAME/VERSION work wherever a model is taken.",
    no_args_is_help=True,
)
console = Console()
TRACKING = typer.Option(
    None,
    "--tracking-uri",
    help="MLflow tracking server or database (default: MLFLOW_TRACKING_URI, else SQLite in TUNELOOP_HOME).",
)
JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _registry(uri: str | None) -> Any:
    return Registry(uri)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else ""


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def register(
    run_dir: Path = typer.Argument(..., help="A training run folder (written by `tuneloop train`)."),
    name: str = typer.Option(..., "--name", "-n", help="Registered model name, e.g. acme-support."),
    description: str = typer.Option("", "--description", "-d", help="Description of this version."),
    base_name: str = typer.Option(
        None, "--base-name", help="Name for the base model an adapter is pinned to."
    ),
    tracking_uri: str = TRACKING,
    as_json: bool = JSON,
) -> None:
    """Register a run as a new version with lineage tags; an adapter run also registers its base."""
    _check_run_folder(run_dir)
    info = _registry(tracking_uri).register_run(run_dir, name, description, base_name=base_name)
    if as_json:
        return _echo_json({"name": info.name, "version": info.version, "path": info.path, "tags": info.tags})
    base = f" (adapter on {info.tags['tuneloop.base']})" if "tuneloop.base" in info.tags else ""
    console.print(f"[green]✓[/] registered {info.ref}{escape(base)}")
    console.print(f"  next: tuneloop registry promote {info.name} {info.version} --alias candidate")


def _check_run_folder(run_dir: Path) -> None:
    """A failed run, or a model/export folder given where a run folder belongs, is named as such."""
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except ValueError:
            return  # the registry names a broken run.json itself
        if isinstance(run, dict) and run.get("status") in ("failed", "interrupted"):
            raise TuneloopError(
                f"{run_json}: the last run in this folder {run['status']}: {run.get('error', '?')}",
                hint="train again; resume=auto continues from its last checkpoint if it saved one",
            )
    elif (run_dir / "config.json").is_file() or (run_dir / "adapter_config.json").is_file():
        raise TuneloopError(
            f"'{run_dir}' is {DESCRIPTION[folder_format(run_dir)]}, not a training run folder",
            hint="register the folder `tuneloop train` wrote (model/ and run.json inside); an export "
            "registers itself with `tuneloop export REF ... --name NAME`",
        )


@app.command("list")
def list_(tracking_uri: str = TRACKING, as_json: bool = JSON) -> None:
    """Registered models with their latest version and aliases."""
    rows = list_models(_registry(tracking_uri))
    if as_json:
        return _echo_json(rows)
    if not rows:
        console.print("no registered models; add one with `tuneloop registry register RUN_DIR --name NAME`")
        return
    table = Table("name", "latest", "versions", "kind", "aliases", "updated", "description")
    for r in rows:
        aliases = ", ".join(f"{a} -> {v}" for a, v in r["aliases"].items())
        table.add_row(
            r["name"],
            str(r["latest"] or "-"),
            str(r["versions"]),
            r["kind"] or "",
            aliases,
            _when(r["updated"]),
            escape(r["description"]),
        )
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME (latest), NAME/VERSION or NAME@alias."),
    tracking_uri: str = TRACKING,
    as_json: bool = JSON,
) -> None:
    """One version: lineage tags, metrics, aliases, stored files, alias history."""
    d = describe(_registry(tracking_uri), ref)
    if as_json:
        return _echo_json(d)
    console.print(
        f"[bold]{d['ref']}[/]  aliases: {', '.join(d['aliases']) or '-'}  created {_when(d['created'])}"
    )
    if d["description"]:
        console.print(f"  {escape(d['description'])}")
    console.print(f"  source: {escape(d['source'])}")
    _pairs(
        "lineage",
        {k.removeprefix("tuneloop."): v for k, v in d["tags"].items() if k != "tuneloop.alias_history"},
    )
    _pairs("metrics", d["metrics"])
    _pairs("files", {k: f"{v:,} bytes" for k, v in d["files"].items()})
    _history_table(d["alias_history"])


def _pairs(title: str, items: dict[str, Any]) -> None:
    if not items:
        return
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    for k, v in items.items():
        table.add_row(escape(k), escape(str(v)))
    console.print(table)


def _history_table(entries: list[dict[str, Any]]) -> None:
    if not entries:
        console.print("alias history: (none)")
        return
    table = Table(
        "time", "alias", "action", "version", "previous", "user", title="alias history", title_justify="left"
    )
    for e in entries:
        table.add_row(
            e.get("time", ""),
            e.get("alias", ""),
            e.get("action", ""),
            str(e.get("version") if e.get("version") is not None else "-"),
            str(e.get("previous") if e.get("previous") is not None else "-"),
            str(e.get("user") or ""),
        )
    console.print(table)


@app.command()
def diff(
    a: str = typer.Argument(..., help="First version (NAME/VERSION, NAME@alias, NAME)."),
    b: str = typer.Argument(..., help="Second version."),
    tracking_uri: str = TRACKING,
    as_json: bool = JSON,
) -> None:
    """Config keys, metrics (with deltas) and lineage that differ between two versions."""
    d = do_diff(_registry(tracking_uri), a, b)
    if as_json:
        return _echo_json(d.to_json())
    if not (d.config or d.metrics or d.lineage):
        console.print(f"{d.a} and {d.b} have the same config, metrics and lineage")
        return
    console.print(f"[bold]{d.a} -> {d.b}[/]")
    # one line per difference (no table): long digests would squeeze a table into unreadable wraps
    for title, rows in (("config", d.config), ("lineage", d.lineage)):
        if rows:
            console.print(title)
        for k, x, y in rows:
            console.print(
                f"  {escape(k)}: {escape(_s(x))} -> {escape(_s(y))}", soft_wrap=True, highlight=False
            )
    if d.metrics:
        console.print("metrics")
    for k, x, y, delta in d.metrics:
        change = f" ({delta:+.6g})" if delta is not None else ""
        console.print(f"  {escape(k)}: {_s(x)} -> {_s(y)}{change}", soft_wrap=True, highlight=False)


def _s(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@app.command()
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="Version number to point the alias at."),
    alias: str = typer.Option(
        "production", "--alias", "-a", help="production, candidate, staging, or any name."
    ),
    tracking_uri: str = TRACKING,
) -> None:
    """Point an alias at a version (recorded in the alias history)."""
    _registry(tracking_uri).promote(name, version, alias)
    console.print(f"[green]✓[/] {name}@{alias} -> {name}/{version}")


@app.command()
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Option("production", "--alias", "-a", help="The alias to move back."),
    tracking_uri: str = TRACKING,
) -> None:
    """Move an alias back to the version it pointed at before."""
    version = _registry(tracking_uri).rollback(name, alias)
    console.print(f"[green]✓[/] {name}@{alias} rolled back to {name}/{version}")


@app.command()
def unalias(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Argument(..., help="The alias to remove."),
    tracking_uri: str = TRACKING,
) -> None:
    """Remove an alias (recorded in the alias history)."""
    _registry(tracking_uri).unalias(name, alias)
    console.print(f"[green]✓[/] removed {name}@{alias}")


@app.command()
def delete(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="Version number."),
    tracking_uri: str = TRACKING,
) -> None:
    """Delete a version (refused while an alias points at it or an adapter is pinned to it)."""
    _registry(tracking_uri).delete(name, version)
    console.print(f"[green]✓[/] deleted {name}/{version}")


@app.command()
def history(
    name: str = typer.Argument(..., help="Registered model name."),
    tracking_uri: str = TRACKING,
    as_json: bool = JSON,
) -> None:
    """Every alias change of a model: promote, rollback, unalias, with time and user."""
    entries = _registry(tracking_uri).history(name)
    if as_json:
        return _echo_json(entries)
    _history_table(entries)
