"""The serving gateway: an OpenAI-compatible HTTP API in front of engines (local or remote).

`create_app(config)` builds the FastAPI app and its `Gateway` (gateway.py: the typed state every route
takes through one dependency); `tuneloop serve` runs it under uvicorn. Routes depend on the
`EngineClient` interface only (client.py: generation and the capabilities the gateway relies on), so a
local `AsyncEngine`, a remote OpenAI-compatible upstream and the fake engine of the tests are
interchangeable. The path of a chat request, file by file, is written down in routers/chat.py.
"""

from __future__ import annotations

from tuneloop.serve.app import create_app
from tuneloop.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
