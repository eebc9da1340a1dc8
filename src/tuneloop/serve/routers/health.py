"""GET /health (the process is alive), /ready (models loaded and warmed up), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready once the models are warm and the rate-limit store answers (unless told to do without)."""
    state = request.app.state
    body: dict = {"ready": state.ready, "models": sorted(state.models)}
    limiter = getattr(state, "limiter", None)
    problem = await limiter.status() if limiter is not None else None
    if problem is not None:
        body["rate_limits"] = problem
        if state.config.limits.redis_unavailable == "reject":
            body["ready"] = False
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
