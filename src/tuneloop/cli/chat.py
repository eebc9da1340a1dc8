"""`tuneloop chat REF`: a conversation in the terminal, streamed as it is generated.

tuneloop chat acme-support@production
tuneloop chat ./runs/acme/model --system "Answer in one sentence." --temperature 0.7

Plain transformers (the reference path `ask` uses), so any reference works: a store name, a folder,
a registry version, LoRA adapters (loaded on their base) and every export format (int8, packed
int4, ONNX - greedy only). The history goes through the model's
chat template every turn; the oldest turns are dropped when it no longer fits the context.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer
from rich.console import Console

from tuneloop.cli.models import check_sampling
from tuneloop.errors import TuneloopError
from tuneloop.models import loading
from tuneloop.models.catalog import DEFAULT_MODEL
from tuneloop.models.load import load_reference

HELP = "/reset clears the conversation, /exit (or Ctrl-D, Ctrl-C) leaves, /help shows this"


def chat(
    ref: str = typer.Argument(
        DEFAULT_MODEL, help="Model reference: store name, folder, NAME@alias, NAME/VERSION."
    ),
    system: str = typer.Option(None, "--system", "-s", help="System prompt (kept across /reset)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply."),
    temperature: float = typer.Option(
        0.0, "--temperature", "-t", min=0.0, help="0 = greedy (deterministic)."
    ),
    top_p: float = typer.Option(
        1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0)."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for sampling (reproducible replies)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 …"),
) -> None:
    """Talk to a model in the terminal: multi-turn, streamed replies, /reset and /exit."""
    check_sampling(ref, temperature, "--temperature")
    err = Console(stderr=True)
    with err.status(f"loading {ref}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation chatter of transformers/peft
        loaded = load_reference(ref, device, pull=True)
    if not loaded.tokenizer.chat_template:
        raise TuneloopError(f"'{ref}' has no chat template", hint="chat needs an instruct/chat model")
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    err.print(f"[bold]{ref}[/] ({HELP})", highlight=False)
    session = Session(loaded.model, loaded.tokenizer, system, max_new_tokens, temperature, top_p)
    try:
        session.loop()
    except KeyboardInterrupt:
        typer.echo()
    err.print("[dim]bye[/]")


class Session:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        system: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict[str, str]] = []
        self.sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}

    def loop(self) -> None:
        while True:
            typer.echo("you> ", nl=False)
            line = sys.stdin.readline()
            if not line:  # end of input (Ctrl-D, or a piped file ran out)
                typer.echo()
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.reply(text)

    def command(self, text: str) -> bool:
        """Handle a /command; False means leave."""
        word = text.split()[0].lower()
        if word in ("/exit", "/quit", "/bye"):
            return False
        if word == "/reset":
            self.history = []
            typer.echo("(conversation cleared)")
        elif word == "/help":
            typer.echo(HELP)
        else:
            typer.echo(f"unknown command {word}; {HELP}")
        return True

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        if not self._fit():
            typer.echo("(that message does not fit the model's context; send a shorter one)")
            return
        typer.echo("bot> ", nl=False)
        pieces = []
        for piece in loading.stream_chat(
            self.model, self.tokenizer, self.system + self.history, **self.sampling
        ):
            pieces.append(piece)
            typer.echo(piece, nl=False)
            sys.stdout.flush()
        typer.echo()
        self.history.append({"role": "assistant", "content": "".join(pieces).strip()})

    def _fit(self) -> bool:
        """Drop the oldest exchanges until the prompt and a full reply fit the model's context."""
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        budget = limit - self.sampling["max_new_tokens"]
        while len(self.history) > 1 and self._prompt_tokens() > budget:
            self.history = self.history[2:] if self.history[0]["role"] == "user" else self.history[1:]
        if self._prompt_tokens() > budget:
            self.history.pop()
            return False
        return True

    def _prompt_tokens(self) -> int:
        text = self.tokenizer.apply_chat_template(
            self.system + self.history, add_generation_prompt=True, tokenize=False
        )
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
