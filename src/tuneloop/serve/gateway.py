"""The gateway's state, typed: everything the routes use, built once by `create_app`.

Routes take it through one dependency, `gw: Gateway = Depends(get_gateway)`. What is cheap and needs no
I/O is built in the constructor; what opens files, databases, the rate-limit store or engines opens
in `start` (the app's lifespan) and closes in `close`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Iterable

from fastapi import Request

from tuneloop.interactions.db import secret
from tuneloop.interactions.feedback import FeedbackStore, RecentResponses
from tuneloop.interactions.privacy import Privacy
from tuneloop.interactions.requestlog import RequestLog
from tuneloop.interactions.retention import housekeeping
from tuneloop.interactions.review import ReviewQueue
from tuneloop.registry import Registry
from tuneloop.serve.adapters import AdapterCache
from tuneloop.serve.backends import build_clients
from tuneloop.serve.client import EngineClient, GenerateRequest
from tuneloop.serve.config import ServeConfig
from tuneloop.serve.errors import APIError
from tuneloop.serve.guard import InputGuard
from tuneloop.serve.jwt import JWTVerifier
from tuneloop.serve.keys import KeyStore
from tuneloop.serve.limits import ConcurrencyGate
from tuneloop.serve.local import LocalClient, SharedEngine
from tuneloop.serve.metrics import Metrics, Sample
from tuneloop.serve.ratelimit import RateLimiter, build_rate_limiter
from tuneloop.serve.reload import watch
from tuneloop.serve.routing import Route, Shadows, resolve
from tuneloop.serve.serving import Served

log = logging.getLogger("tuneloop.serve")


class Gateway:
    """The served models, routes, keys, limits, stores and metrics of one app."""

    # opened by `start`
    keys: KeyStore
    feedback: FeedbackStore
    limiter: RateLimiter

    def __init__(self, config: ServeConfig):
        self.config = config
        # served name -> client and gate; replaced whole on a change (reload, adapter load), so a
        # request that read it keeps a consistent view
        self.models: dict[str, Served] = {}
        self.routes: dict[str, Route] = {r.name: Route.from_config(r) for r in config.routes}
        self.shadows = Shadows()
        self.guard = InputGuard(config.input)
        self.reload_lock = asyncio.Lock()  # one change of the served models at a time
        self.background: set[asyncio.Task] = set()  # retiring replaced clients, kept alive until done
        self.ready = False
        self.privacy = Privacy(config.log.redact_pii)  # the pseudonym key is added in `start`
        self.recent_responses = RecentResponses()  # replaced by the database-backed one in `start`
        self.metrics = Metrics(
            lambda: {n: s.client.load() for n, s in self.models.items()},
            lambda: {n: s.gate for n, s in self.models.items()},
            self.adapter_caches,
        )
        self.jwt: JWTVerifier | None = None
        self.request_log: RequestLog | None = None
        # the console: its confirm tokens' key, and the metric snapshots its rates are computed from
        self.console_secret = secrets.token_bytes(32)
        self.console_snapshots: deque[tuple[float, dict[Sample, float]]] = deque()
        self._registry: Registry | None = None
        self._review_queue: ReviewQueue | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, clients: dict[str, EngineClient] | None = None) -> None:
        """Open the stores and the rate-limit store, load (or take) the engines, warm them up."""
        config, log_cfg = self.config, self.config.log
        self.keys = KeyStore(config.auth.database_url)
        self.jwt = JWTVerifier(config.auth.jwt) if config.auth.jwt else None
        key = secret(self.keys.engine, "pseudonym_key") if log_cfg.pseudonymize_users else None
        self.privacy = Privacy(log_cfg.redact_pii, key)
        self.feedback = FeedbackStore(config.auth.database_url, self.privacy)
        # who each answer was given to (the key that may rate it): memory, then the database
        self.recent_responses = RecentResponses(engine=self.feedback.engine, privacy=self.privacy)
        self.limiter = build_rate_limiter(config.limits, self.metrics.rate_limit_store_errors)
        problem = await self.limiter.status()
        if problem is not None:  # not fatal: /ready says so, and requests get the configured behaviour
            log.error("%s (limits.redis_unavailable=%s)", problem, config.limits.redis_unavailable)
        self.request_log = (
            RequestLog(log_cfg.path, log_cfg.max_bytes, log_cfg.backups, self.privacy)
            if log_cfg.enabled
            else None
        )
        if clients is None:
            clients = await asyncio.to_thread(build_clients, config)
        # self.models owns the clients from now on (a reload replaces them there): nothing else may
        # keep a reference, or the first engine (weights, KV cache) stays alive for the server's life
        self.models = {name: Served(name, c, self.gate(name, c)) for name, c in clients.items()}
        if config.warmup:
            await asyncio.gather(*(c.start() for c in clients.values()))
        self.ready = True
        if config.reload_interval_s:
            self._tasks.append(asyncio.create_task(watch(self, config.reload_interval_s)))
        self._tasks.append(asyncio.create_task(housekeeping(self, log_cfg.retention_days)))
        log.info("serving %s", ", ".join(self.models) or "no models")

    async def close(self) -> None:
        """Drain shadows and retirements, close the clients serving now, flush the logs."""
        self.ready = False
        for task in self._tasks:
            task.cancel()
        await self.shadows.drain()
        await asyncio.gather(*self.background, return_exceptions=True)
        serving = {id(s.client): s.client for s in self.models.values()}.values()  # replaced ones are closed
        await asyncio.gather(*(c.close() for c in serving), return_exceptions=True)
        if self.request_log is not None:
            await asyncio.to_thread(self.request_log.close)  # writes what is queued
        try:
            await asyncio.to_thread(self.recent_responses.flush)
        except Exception:
            log.exception("the last answered responses could not be recorded")
        await self.limiter.close()

    def gate(self, name: str, client: EngineClient) -> ConcurrencyGate:
        """The admission gate of a served name from the config: `max_concurrency` running (unset: as
        many as the engine runs in one step, it batches them all; else 64), `max_queue` waiting."""
        m = next((m for m in self.config.models if m.name == name), None)
        running = (m.max_concurrency if m else None) or client.max_num_seqs or 64
        return ConcurrencyGate(running, m.max_queue if m else 256, self.config.limits.retry_after_s)

    def served(self, name: str, user: str | None) -> Served:
        """The model (or the route's variant for this user) that answers a request for `name`; 404."""
        served = resolve(self.routes, self.models, name, user)
        if served is None:
            raise APIError(404, f"the model '{name}' does not exist", "model_not_found", "model")
        return served

    def mirror(self, name: str, choices: list[GenerateRequest]) -> None:
        """Send a copy to the shadow model of the route `name`, if it has one."""
        route = self.routes.get(name)
        if route is not None and route.shadow is not None:
            self.shadows.mirror(self.models[route.shadow], choices)

    def adapter_caches(self) -> Iterable[AdapterCache]:
        """The adapter cache of every local engine among the served models, once each."""
        seen: dict[int, AdapterCache] = {}
        for served in self.models.values():
            client = served.client
            if isinstance(client, LocalClient) and not client.shared.closed:
                seen.setdefault(id(client.shared.adapters), client.shared.adapters)
        return seen.values()

    def base_name(self, shared: SharedEngine) -> str:
        """What an adapter's base is called (`parent` in /v1/models): the first served name of that base
        alone (no adapter), else the base's version."""
        for name, served in self.models.items():
            client = served.client
            if isinstance(client, LocalClient) and client.shared is shared and client.lora is None:
                return name
        return shared.adapters.label

    def registry(self) -> Registry:
        """The model registry of the console's admin routes, opened on first use (MLFLOW_TRACKING_URI,
        else the SQLite in TUNELOOP_HOME): a gateway whose console never asks pays nothing for it."""
        if self._registry is None:
            self._registry = Registry()
        return self._registry

    def review_queue(self) -> ReviewQueue:
        """The loop's approval queue (in the gateway's database), opened on first use."""
        if self._review_queue is None:
            self._review_queue = ReviewQueue(self.config.auth.database_url)
        return self._review_queue


def gateway_of(request: Request) -> Gateway:
    """The app's `Gateway`, for code that holds the request (auth checks the key before the route's
    dependencies run)."""
    return request.app.state.gateway


async def get_gateway(request: Request) -> Gateway:
    """The dependency routes take (`gw: Gateway = Depends(get_gateway)`). Async: FastAPI runs a plain
    function dependency in a worker thread, which cost ~0.3 ms of CPU a request (measured)."""
    return gateway_of(request)
