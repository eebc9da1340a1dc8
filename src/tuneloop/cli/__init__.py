"""The `tuneloop` command: one Typer sub-app per lifecycle stage.

Commands are thin: parse, call the library, print. A `TuneloopError` (a user mistake) is printed
as a short message with a hint and exit code 2, never a traceback.

Every command module is imported here, at start; a command imports the stage it runs inside its
function only where that stage needs torch or an optional extra, so `tuneloop --help` and the light
commands start without them.
"""

from __future__ import annotations

import logging
import sys

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tuneloop import __version__
from tuneloop.cli import bench as bench_cli
from tuneloop.cli import chat as chat_cli
from tuneloop.cli import data, doctor, models, plan
from tuneloop.cli import eval as eval_cli
from tuneloop.cli import export as export_cli
from tuneloop.cli import logs as logs_cli
from tuneloop.cli import loop as loop_cli
from tuneloop.cli import quickstart as quickstart_cli
from tuneloop.cli import registry as registry_cli
from tuneloop.cli import serve as serve_cli
from tuneloop.cli import train as train_cli
from tuneloop.errors import TuneloopError

err_console = Console(stderr=True)

# Import-time chatter of dependencies is not for our users: torchao warns about its optional CUDA
# extensions on CPU machines, torch about pytree registrations torchao makes.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def print_error(e: TuneloopError) -> None:
    # escape: messages hold user text and hints hold brackets (pip install 'tuneloop[train]')
    err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
    if e.hint:
        err_console.print(f"  [yellow]hint:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)


class _Group(TyperGroup):
    """Turns a user mistake anywhere below into a short message and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TuneloopError as e:
            print_error(e)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    name="tuneloop",
    help="From raw documents to a fine-tuned, versioned, served LLM - and back from user feedback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tuneloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """tuneloop: data -> train -> evaluate -> register -> serve -> feedback -> better model."""


def _register() -> None:
    # Stages register here only when they work end to end (no stubs).
    app.add_typer(models.app, name="models")
    app.add_typer(data.app, name="data")
    app.command("ask")(models.ask)
    app.command("doctor")(doctor.doctor)
    app.command("plan")(plan.plan)
    app.command("train")(train_cli.train)
    app.add_typer(bench_cli.app, name="bench")
    app.command("eval")(eval_cli.eval_command)
    app.command("export")(export_cli.export)
    app.add_typer(registry_cli.app, name="registry")
    app.command("serve")(serve_cli.serve)
    app.add_typer(serve_cli.keys_app, name="keys")
    app.add_typer(serve_cli.feedback_app, name="feedback")
    app.add_typer(logs_cli.app, name="logs")
    app.add_typer(loop_cli.app, name="loop")
    serve_cli.feedback_app.command("review")(loop_cli.review)
    app.command("quickstart")(quickstart_cli.quickstart)
    app.command("chat")(chat_cli.chat)


_register()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="tuneloop")
    except TuneloopError as e:  # raised outside a command (e.g. while parsing)
        print_error(e)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
