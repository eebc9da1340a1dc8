"""`tuneloop doctor`: print what this machine can do for tuneloop (thin; the work is in resources.doctor)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.resources.doctor import DoctorReport, collect


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _system_table(report: DoctorReport) -> Table:
    s, t = report.system, report.torch
    table = Table(title="System", show_header=False, title_justify="left")
    rows = [
        ("OS", f"{s.platform} (kernel {s.kernel})"),
        ("Python", s.python),
        ("CPU", f"{s.cpu_model}; {s.cores_logical} logical / {s.cores_physical or '?'} physical cores"),
        ("RAM", f"{_gb(s.ram_available)} available of {_gb(s.ram_total)}"),
        ("Disk", f"{_gb(s.disk_free)} free at {s.disk_path} (TUNELOOP_HOME={s.home})"),
        ("torch", f"{t.version or 'not installed'} (CUDA build: {t.cuda or 'none, CPU only'})"),
        ("CUDA available", "yes" if t.cuda_available else "no"),
        ("NVIDIA driver", report.driver_version or "not found"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _gpu_table(report: DoctorReport) -> Table:
    table = Table(title=f"GPUs (via {report.gpu_source})", title_justify="left")
    for col in ("#", "name", "memory total", "memory free", "compute cap."):
        table.add_column(col)
    for g in report.gpus:
        cap = g.compute_capability or "?"
        table.add_row(str(g.index), g.name, _gb(g.memory_total), _gb(g.memory_free), cap)
    return table


def _libraries_table(report: DoctorReport) -> Table:
    table = Table(title="Libraries", title_justify="left")
    table.add_column("package")
    table.add_column("version")
    for name, version in report.libraries.items():
        table.add_row(name, version or "[dim]-[/]")
    return table


def _extras_table(report: DoctorReport) -> Table:
    table = Table(title="Extras", title_justify="left")
    for col in ("extra", "status", "missing or wrong version"):
        table.add_column(col)
    table.add_column("fix", no_wrap=True)  # a wrapped command cannot be copy-pasted
    for name, status in report.extras.items():
        missing = ", ".join(
            m.requirement if m.installed is None else f"{m.requirement} (have {m.installed})"
            for m in status.missing
        )
        state = "[green]ok[/]" if status.ok else "[yellow]incomplete[/]"
        # escape: "tuneloop[serve]" and "uvicorn[standard]" would otherwise be eaten as rich markup.
        table.add_row(name, state, escape(missing), escape(status.pip_command or ""))
    return table


def _print_human(report: DoctorReport) -> None:
    console = Console()
    console.print(_system_table(report))
    if report.gpus:
        console.print(_gpu_table(report))
    else:
        console.print("[bold]GPUs:[/] No NVIDIA GPU found.")
    console.print(_libraries_table(report))
    console.print(_extras_table(report))
    if report.warnings:
        console.print("[bold]Advice:[/]")
        for note in report.warnings:
            console.print(f"  - {escape(note)}", highlight=False)


def doctor(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Report OS, Python, torch/CUDA, GPUs, CPU, RAM, disk, library versions and missing extras."""
    report = collect()
    if json_output:
        # Plain echo, not rich: the JSON must not be wrapped or colored.
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_human(report)
