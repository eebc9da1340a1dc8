"""The FastAPI app factory: a typed `Gateway` holds the app's state; one router per resource.

`create_app(config)` builds the gateway and the app; the engines load in the lifespan
(`Gateway.start`). Tests and benchmarks pass `clients=` (any `EngineClient`, such as the fake one)
to run the gateway without a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from tuneloop.serve.client import EngineClient
from tuneloop.serve.config import ServeConfig
from tuneloop.serve.errors import install_handlers
from tuneloop.serve.gateway import Gateway
from tuneloop.serve.middleware import RequestContext
from tuneloop.serve.openapi import install_openapi
from tuneloop.serve.routers import adapters, admin, chat, completions, feedback, health, models, review
from tuneloop.serve.routers.console import console_routers


def create_app(config: ServeConfig | None = None, clients: dict[str, EngineClient] | None = None) -> FastAPI:
    config = config or ServeConfig()
    gw = Gateway(config)
    app = FastAPI(title="tuneloop", lifespan=_lifespan(gw, clients))
    app.state.gateway = gw  # the one thing on app.state: routes take it through `Depends(get_gateway)`
    install_handlers(app)
    for module in (chat, completions, models, health, feedback, admin, adapters, review):
        app.include_router(module.router)
    for router in console_routers():  # the web console and the admin routes it needs
        app.include_router(router)
    app.add_middleware(RequestContext, max_body_bytes=config.limits.max_body_bytes)
    install_openapi(app, config.limits)  # the document says what the server answers (400, 401, ...)
    return app


def _lifespan(
    gw: Gateway, given: dict[str, EngineClient] | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start(given)
        try:
            yield
        finally:
            await gw.close()

    return lifespan
