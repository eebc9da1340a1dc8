"""A/B and canary routing: a route name splits traffic across served models by weight.

The choice is sticky: a user (the request's `user` field or the X-Tuneloop-User header) hashes to a
fixed point in [0, 1), so one user stays on one variant while the weights stay put. A shadow
variant gets a mirrored copy of each request in the background; its answer is discarded and it
can never slow down or fail the primary answer. Routes are replaced whole, so a weight change
applies to the next request and never to one in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass, replace

from tuneloop.serve.client import GenerateRequest
from tuneloop.serve.config import RouteConfig
from tuneloop.serve.serving import Served

log = logging.getLogger("tuneloop.serve")


@dataclass(frozen=True)
class Route:
    name: str
    variants: tuple[tuple[str, float], ...]  # (served name, weight)
    shadow: str | None = None

    @classmethod
    def from_config(cls, c: RouteConfig) -> Route:
        return cls(c.name, tuple((v.model, v.weight) for v in c.variants), c.shadow)

    def pick(self, user: str | None) -> str:
        """The variant for this user (random when anonymous)."""
        point = _unit(f"{self.name}:{user}") if user else random.random()
        total = sum(w for _, w in self.variants)
        edge = 0.0
        for name, weight in self.variants:
            edge += weight / total
            if point < edge:
                return name
        return self.variants[-1][0]  # rounding at the top end


def _unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def resolve(
    routes: dict[str, Route], models: dict[str, Served], name: str, user: str | None
) -> Served | None:
    """The served model for a requested name: a plain model, or the picked variant of a route."""
    route = routes.get(name)
    if route is None:
        return models.get(name)
    chosen = models[route.pick(user)]
    # metrics and logs name what the client asked for (the route) and the variant that answered
    return replace(chosen, name=name, variant=chosen.name)


class Shadows:
    """Background mirrored requests; skipped (never queued) when the shadow model is busy."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def mirror(self, served: Served, choices: list[GenerateRequest]) -> None:
        if served.gate.running >= served.gate.max_concurrency:
            return
        copies = [replace(c, request_id=f"shadow-{c.request_id}") for c in choices]
        task = asyncio.create_task(self._run(served, copies))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, served: Served, choices: list[GenerateRequest]) -> None:
        async with served.gate.slot():
            try:
                for c in choices:
                    async for _ in served.client.generate(c):
                        pass
            except Exception:  # a failing shadow is logged, never the user's problem
                log.warning("shadow request to %s failed", served.name, exc_info=True)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
