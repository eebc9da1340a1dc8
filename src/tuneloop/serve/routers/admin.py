"""Admin routes (the `admin` scope): the API keys, without their secrets."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import require
from tuneloop.serve.keys import ApiKey

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/keys")
def list_keys(request: Request, key: ApiKey = Depends(require("admin"))) -> dict:
    return {"object": "list", "data": [asdict(k) for k in request.app.state.keys.list()]}
