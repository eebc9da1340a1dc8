"""A real uvicorn server on 127.0.0.1 (free port, background thread) for the gateway tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn

from tuneloop.serve import ServeConfig, create_app
from tuneloop.serve.client import EngineClient


class Server:
    def __init__(self, app, port: int):
        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self):
        return self.app.state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_server(config: ServeConfig, clients: dict[str, EngineClient] | None = None) -> Iterator[Server]:
    app = create_app(config, clients)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield Server(app, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def serve():
    """`with serve(config, clients) as server:` — the server stops at the end of the block."""
    return run_server
