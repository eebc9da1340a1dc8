"""The FastAPI app factory: engines load in the lifespan into `app.state`; one router per resource.

`create_app(config)` builds engines from the config; tests and benchmarks pass `clients=` (any
`EngineClient`, such as the fake one) to run the gateway without a model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tuneloop.interactions.db import secret
from tuneloop.interactions.feedback import FeedbackStore, RecentResponses
from tuneloop.interactions.privacy import Privacy
from tuneloop.interactions.requestlog import RequestLog
from tuneloop.interactions.retention import housekeeping
from tuneloop.serve.adapters import adapter_caches
from tuneloop.serve.client import EngineClient
from tuneloop.serve.config import ServeConfig
from tuneloop.serve.errors import install_handlers
from tuneloop.serve.guard import InputGuard
from tuneloop.serve.jwt import JWTVerifier
from tuneloop.serve.keys import KeyStore
from tuneloop.serve.limits import ConcurrencyGate
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.middleware import RequestContext
from tuneloop.serve.openapi import install_openapi
from tuneloop.serve.ratelimit import build_rate_limiter
from tuneloop.serve.reload import watch
from tuneloop.serve.routers import adapters, admin, chat, completions, feedback, health, models, review
from tuneloop.serve.routers.console import console_routers
from tuneloop.serve.routing import Route, Shadows
from tuneloop.serve.serving import Served

log = logging.getLogger("tuneloop.serve")


def create_app(config: ServeConfig | None = None, clients: dict[str, EngineClient] | None = None) -> FastAPI:
    config = config or ServeConfig()
    app = FastAPI(title="tuneloop", lifespan=_lifespan(config, clients))
    app.state.config = config
    app.state.models = {}
    app.state.routes = {r.name: Route.from_config(r) for r in config.routes}
    app.state.shadows = Shadows()
    app.state.guard = InputGuard(config.input)
    app.state.reload_lock = asyncio.Lock()
    app.state.background = set()  # tasks (retiring replaced models) kept alive until done
    app.state.ready = False
    app.state.privacy = Privacy(config.log.redact_pii)  # the pseudonym key is added in the lifespan
    app.state.recent_responses = RecentResponses()  # replaced by the database-backed one in the lifespan
    app.state.metrics = Metrics(
        lambda: {n: s.client.load() for n, s in app.state.models.items()},
        lambda: {n: s.gate for n, s in app.state.models.items()},
        lambda: adapter_caches(app.state.models),
    )
    install_handlers(app)
    for module in (chat, completions, models, health, feedback, admin, adapters, review):
        app.include_router(module.router)
    for router in console_routers():  # the web console and the admin routes it needs
        app.include_router(router)
    app.add_middleware(RequestContext, max_body_bytes=config.limits.max_body_bytes)
    install_openapi(app, config.limits)  # the document says what the server answers (400, 401, ...)
    return app


def _lifespan(config: ServeConfig, given: dict[str, EngineClient] | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.keys = KeyStore(config.auth.database_url)
        state.jwt = JWTVerifier(config.auth.jwt) if config.auth.jwt else None
        log_cfg = config.log
        key = secret(state.keys.engine, "pseudonym_key") if log_cfg.pseudonymize_users else None
        state.privacy = Privacy(log_cfg.redact_pii, key)
        state.feedback = FeedbackStore(config.auth.database_url, state.privacy)
        # who each answer was given to (the key that may rate it): memory, then the database
        state.recent_responses = RecentResponses(engine=state.feedback.engine, privacy=state.privacy)
        state.limiter = build_rate_limiter(config.limits, state.metrics.rate_limit_store_errors)
        problem = await state.limiter.status()
        if problem is not None:  # not fatal: /ready says so, and requests get the configured behaviour
            log.error("%s (limits.redis_unavailable=%s)", problem, config.limits.redis_unavailable)
        state.request_log = (
            RequestLog(log_cfg.path, log_cfg.max_bytes, log_cfg.backups, state.privacy)
            if log_cfg.enabled
            else None
        )
        if given is None:
            from tuneloop.serve.backends import build_clients

            clients = await asyncio.to_thread(build_clients, config)
        else:
            clients = given
        state.models = {name: Served(name, c, _gate(config, name, c)) for name, c in clients.items()}
        if config.warmup:
            await asyncio.gather(*(c.start() for c in clients.values()))
        # state.models owns the clients from now on: a reload replaces them there, and a reference kept
        # here would keep the first engine (weights and KV cache) alive for the server's life
        del clients
        state.ready = True
        watcher = (
            asyncio.create_task(watch(state, config.reload_interval_s)) if config.reload_interval_s else None
        )
        keeper = asyncio.create_task(housekeeping(state, log_cfg.retention_days))
        log.info("serving %s", ", ".join(state.models) or "no models")
        try:
            yield
        finally:
            state.ready = False
            if watcher is not None:
                watcher.cancel()
            keeper.cancel()
            await state.shadows.drain()
            await asyncio.gather(*state.background, return_exceptions=True)
            serving = {
                id(s.client): s.client for s in state.models.values()
            }.values()  # replaced ones are closed
            await asyncio.gather(*(c.close() for c in serving), return_exceptions=True)
            if state.request_log is not None:
                await asyncio.to_thread(state.request_log.close)  # writes what is queued
            try:
                await asyncio.to_thread(state.recent_responses.flush)
            except Exception:
                log.exception("the last answered responses could not be recorded")
            await state.limiter.close()

    return lifespan


def _gate(config: ServeConfig, name: str, client: EngineClient) -> ConcurrencyGate:
    m = next((m for m in config.models if m.name == name), None)
    # unset max_concurrency: as many as the engine runs in one step (it batches them all), else 64
    running = (m.max_concurrency if m else None) or getattr(client, "max_num_seqs", None) or 64
    return ConcurrencyGate(running, m.max_queue if m else 256, config.limits.retry_after_s)
