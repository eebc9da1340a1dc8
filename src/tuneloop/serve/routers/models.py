"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"], route_class=AuthFirst)


@router.get("/v1/models")
def list_models(request: Request, key: ApiKey = Depends(require("inference"))) -> dict:
    state = request.app.state
    names = [n for n in [*state.models, *state.routes] if key.allows_model(n)]
    return ModelList(data=[ModelCard(id=n) for n in names]).model_dump()
