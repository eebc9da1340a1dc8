"""Admin routes for the loop's approval queue (the `admin` scope): list, approve (optionally edited), reject.

The queue lives in the gateway's database (`tuneloop.interactions.review`), so `tuneloop feedback review`
in a terminal and these routes on any replica see the same items.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import TuneloopError
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.guard import check_characters
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import NON_BLANK, Text

router = APIRouter(prefix="/admin/review", tags=["admin"], route_class=AuthFirst)
DECIDE = documented(404, 409, s404="No review item with that id", s409="The item is decided already")
ITEM_ID = Path(ge=1, le=2**63 - 1)  # a 64-bit INTEGER row id: larger ids are a 400, not a database error


@router.get("")
def list_items(
    model: str | None = Query(None, max_length=200),
    status: str = Query("pending", pattern="^(pending|approved|rejected)$"),
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    items = gw.review_queue().list(model, status)
    return {"object": "list", "data": [i.to_json() for i in items]}


class Approval(BaseModel):
    model_config = ConfigDict(strict=True)

    # an edited answer to train on instead (not blank: ReviewQueue.approve refuses that)
    answer: str | None = Field(default=None, max_length=20000, json_schema_extra=NON_BLANK)


class Rejection(BaseModel):
    model_config = ConfigDict(strict=True)

    reason: Text | None = Field(default=None, max_length=2000)


def _decide(gw: Gateway, item_id: int, key: ApiKey, approve: bool, text: str | None) -> dict:
    check_characters(text)
    try:
        queue = gw.review_queue()
        item = queue.approve(item_id, key.id, text) if approve else queue.reject(item_id, key.id, text)
    except TuneloopError as e:
        if e.message.startswith("no review item"):
            raise APIError(404, e.message, "review_item_not_found") from None
        raise APIError(409 if "already" in e.message else 400, e.message, "invalid_value") from None
    return item.to_json()


@router.post("/{item_id}/approve", responses=DECIDE)
def approve(
    item_id: int = ITEM_ID,
    body: Approval | None = None,
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    return _decide(gw, item_id, key, True, body.answer if body else None)


@router.post("/{item_id}/reject", responses=DECIDE)
def reject(
    item_id: int = ITEM_ID,
    body: Rejection | None = None,
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    return _decide(gw, item_id, key, False, body.reason if body else None)
