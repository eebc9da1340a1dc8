"""The quickstart's serving stage: the gateway on `NAME@production` in this process, an API key,
and the lines a user copies (curl, the `openai` client) to ask it.

The server runs in a background thread (uvicorn), so the caller can ask it a sample question and
then either wait for Ctrl-C (`tuneloop quickstart`) or stop it (tests).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.flows.quickstart.settings import Workdir

if TYPE_CHECKING:
    from tuneloop.flows.quickstart.stages import RegisterResult

START_TIMEOUT_S = 600.0  # loading and warming the engine on a busy 2-core CPU


@dataclass
class Running:
    server: Any  # uvicorn.Server
    thread: threading.Thread
    url: str  # http://HOST:PORT/v1, as a client on this machine reaches it
    model: str  # the served name

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C or SIGTERM (`kill`, a container stop) stops it gracefully."""
        stopping = threading.Event()
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set()) if on_main else None
        try:
            while self.thread.is_alive() and not stopping.is_set():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_settings(reg: RegisterResult, host: str, port: int) -> dict[str, Any]:
    """One served name: the registered base with the `production` adapter on it (or the full model),
    re-resolved every 30 s so that moving the alias swaps the model live."""
    entry = (
        {"name": reg.name, "model": reg.base, "lora": reg.ref}
        if reg.base
        else {"name": reg.name, "model": reg.ref}
    )
    return {"host": host, "port": port, "models": [entry], "auth": {"enabled": True}, "reload_interval_s": 30}


def serve_config(reg: RegisterResult, host: str, port: int) -> Any:
    from tuneloop.serve import ServeConfig  # the serve extra (fastapi): lazy, like start_server's

    return load_config(ServeConfig, serve_settings(reg, host, port))


def start_server(reg: RegisterResult, host: str = "127.0.0.1", port: int = 8000) -> Running:
    """Start the gateway and return once it answers (engine loaded and warmed up)."""
    try:
        import uvicorn

        from tuneloop.serve import create_app
    except ImportError as e:
        raise missing_extra(e.name or "fastapi", "serve") from None
    check_port(host, port)
    config = serve_config(reg, host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="quickstart-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise TuneloopError(
                f"the server on {host}:{port} stopped while starting (see its log above)",
                hint=f"`tuneloop serve --model {reg.ref}` shows the same error on its own",
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TuneloopError(f"the server did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return Running(server, thread, f"http://{client_host}:{port}/v1", reg.name)


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise TuneloopError(
                f"cannot listen on {host}:{port}: {e.strerror or e}",
                hint="pass --port with a free port (or stop what runs there), or --no-serve",
            ) from None


def create_key(wd: Workdir, served: str) -> str:
    """A fresh inference key for the served name; the quickstart's previous key is revoked."""
    from tuneloop.serve.keys import KeyStore  # the serve extra (sqlalchemy): lazy

    store = KeyStore()
    previous = (wd.state.data["stages"].get("serve") or {}).get("key_id")
    if previous:
        with contextlib.suppress(TuneloopError):  # already revoked, or the key database was replaced
            store.revoke(previous)
    key, record = store.create("quickstart", ["inference", "feedback"], [served])
    wd.state.done("serve", "", key_id=record.id)
    return key


def ask_server(running: Running, key: str, question: str, max_tokens: int = 64) -> Iterator[str]:
    """Stream the answer to `question` through the server with the `openai` client."""
    try:
        from openai import OpenAI
    except ImportError:
        raise missing_extra("openai", "serve") from None
    client = OpenAI(base_url=running.url, api_key=key, max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model=running.model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def curl_line(running: Running, key: str, question: str) -> str:
    body = {"model": running.model, "messages": [{"role": "user", "content": question}], "max_tokens": 64}
    return (
        f"curl {running.url}/chat/completions -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body, ensure_ascii=False))}"
    )


def openai_snippet(running: Running, key: str, question: str) -> str:
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{running.url}", api_key="{key}")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{running.model}",\n'
        f'    messages=[{{"role": "user", "content": {json.dumps(question, ensure_ascii=False)}}}],\n'
        ")\n"
        "print(reply.choices[0].message.content)"
    )


def write_serve_config(wd: Workdir, reg: RegisterResult, host: str, port: int) -> Path:
    """WORKDIR/serve.yaml: the same server later, with `tuneloop serve --config`."""
    path = wd.root / "serve.yaml"
    header = "# written by `tuneloop quickstart`; serve with: tuneloop serve --config " + str(path) + "\n"
    path.write_text(
        header + yaml.safe_dump(serve_settings(reg, host, port), sort_keys=False), encoding="utf-8"
    )
    return path
