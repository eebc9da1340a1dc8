"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.adapters import base_name
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"], route_class=AuthFirst)


@router.get("/v1/models")
def list_models(request: Request, key: ApiKey = Depends(require("inference"))) -> dict:
    state = request.app.state
    cards = [_card(state.models, n, s.client) for n, s in state.models.items() if key.allows_model(n)]
    cards += [ModelCard(id=n) for n in state.routes if key.allows_model(n)]
    return ModelList(data=cards).model_dump()


def _card(models: dict, name: str, client: object) -> ModelCard:
    """vLLM's card: `root` what answers, `parent` an adapter's base (loaded adapters are listed at once)."""
    shared = getattr(client, "shared", None)
    parent = base_name(models, shared) if getattr(client, "lora", None) is not None else None
    return ModelCard(id=name, root=getattr(client, "version", None), parent=parent)
