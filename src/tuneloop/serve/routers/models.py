"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.client import EngineClient
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.local import LocalClient
from tuneloop.serve.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"], route_class=AuthFirst)


@router.get("/v1/models")
def list_models(key: ApiKey = Depends(require("inference")), gw: Gateway = Depends(get_gateway)) -> dict:
    cards = [_card(gw, n, s.client) for n, s in gw.models.items() if key.allows_model(n)]
    cards += [ModelCard(id=n) for n in gw.routes if key.allows_model(n)]
    return ModelList(data=cards).model_dump()


def _card(gw: Gateway, name: str, client: EngineClient) -> ModelCard:
    """vLLM's card: `root` what answers, `parent` an adapter's base (loaded adapters are listed at once)."""
    adapter = isinstance(client, LocalClient) and client.lora is not None
    parent = gw.base_name(client.shared) if adapter else None
    return ModelCard(id=name, root=client.version, parent=parent)
