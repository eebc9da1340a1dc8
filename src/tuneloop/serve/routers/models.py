"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import require
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(request: Request, key: ApiKey = Depends(require("inference"))) -> dict:
    names = [n for n in request.app.state.models if key.allows_model(n)]
    return ModelList(data=[ModelCard(id=n) for n in names]).model_dump()
