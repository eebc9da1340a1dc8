"""GET /health (the process is alive), /ready (models loaded and warmed up), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from tuneloop.serve.gateway import Gateway, get_gateway

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    rate_limits: str | None = None  # why the rate-limit store is not usable, when it is not


READY = {200: {"model": Readiness}, 503: {"model": Readiness, "description": "Not ready (yet)"}}


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", response_model=None, responses=READY)
async def ready(gw: Gateway = Depends(get_gateway)) -> JSONResponse:
    """Ready once the models are warm and the rate-limit store answers (unless told to do without)."""
    body: dict = {"ready": gw.ready, "models": sorted(gw.models)}
    problem = await gw.limiter.status()
    if problem is not None:
        body["rate_limits"] = problem
        if gw.config.limits.redis_unavailable == "reject":
            body["ready"] = False
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", response_class=PlainTextResponse)  # Prometheus' text format
def metrics(gw: Gateway = Depends(get_gateway)) -> Response:
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
