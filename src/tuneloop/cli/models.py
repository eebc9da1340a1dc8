"""`tuneloop models` (being written)."""

import typer

app = typer.Typer(help="Model store: pull, list, show.", no_args_is_help=True)
