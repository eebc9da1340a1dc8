"""`tuneloop doctor` (being written)."""

import typer


def doctor() -> None:
    """(being written)"""
    raise typer.Exit(1)
