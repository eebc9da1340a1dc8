"""`tuneloop plan` (being written)."""

import typer


def plan() -> None:
    """(being written)"""
    raise typer.Exit(1)
