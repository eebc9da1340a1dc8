"""Admin routes for side-by-side votes and recent feedback (the `admin` scope).

POST /admin/preferences   {chosen: response id, rejected: response id, comment?}: one prompt was sent
                          to two versions and a person marked the better answer.
GET  /admin/feedback      the latest feedback rows

A vote is stored in the feedback store the loop already reads, as two ordinary rows:
- the better answer: rating 5 (thumbs up);
- the worse answer: rating 1 with the better answer as its `correction`.
The loop's curation turns a correction into a preference pair (chosen = the correction, rejected =
the answer it corrects) for DPO, and into an SFT example, of the served name that gave the worse
answer; with review on, the pair waits in the approval queue like any other. The texts are taken
from the request log (what was really served), never from the client; both answers must answer the
same messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.interactions.feedback import as_json
from tuneloop.interactions.records import answer_text, interaction
from tuneloop.interactions.requestlog import read_log
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.guard import check_characters
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import Text

router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuthFirst)
LOG_WAIT_S = 3.0  # a stream's log line is written just after its last event reaches the client


class Vote(BaseModel):
    model_config = ConfigDict(strict=True)

    chosen: str = Field(min_length=1, max_length=200, description="response id of the better answer")
    rejected: str = Field(
        min_length=1, max_length=200, description="response id of the worse answer (not the chosen one)"
    )
    comment: Text | None = Field(default=None, max_length=2000)


def _logged(gw: Gateway, ids: set[str]) -> dict[str, dict[str, Any]]:
    log = gw.request_log
    if log is None:
        raise APIError(
            409, "the request log is off (log.enabled: false); votes need it", "request_log_disabled"
        )
    return read_log(log.path, ids)


async def _records(gw: Gateway, ids: set[str]) -> dict[str, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOG_WAIT_S
    while True:
        found = await asyncio.to_thread(_logged, gw, ids)
        if len(found) == len(ids) or loop.time() > deadline:
            return found
        await asyncio.sleep(0.1)


@router.post(
    "/preferences",
    responses=documented(
        404,
        409,
        s404="A response is not in the request log",
        s409="The request log is off (log.enabled: false)",
    ),
)
async def vote(
    body: Vote, key: ApiKey = Depends(require("admin")), gw: Gateway = Depends(get_gateway)
) -> dict:
    check_characters(body.comment)
    if body.chosen == body.rejected:
        raise APIError(400, "chosen and rejected are the same answer", "same_response", "rejected")
    found = await _records(gw, {body.chosen, body.rejected})
    missing = sorted({body.chosen, body.rejected} - set(found))
    if missing:
        raise APIError(404, f"response '{missing[0]}' is not in the request log", "response_not_found")
    better, worse = found[body.chosen], found[body.rejected]
    if interaction(better, []).prompt != interaction(worse, []).prompt:
        raise APIError(400, "the two answers do not answer the same messages", "invalid_value")
    text = answer_text(better.get("response"))
    if text is None or better.get("status") != 200 or worse.get("status") != 200:
        raise APIError(400, "both answers must have succeeded", "invalid_value")
    store, note = gw.feedback, body.comment or ""
    won = await asyncio.to_thread(
        store.add,
        body.chosen,
        5,
        key.id,
        None,
        _comment(f"preferred over {body.rejected} ({worse.get('model')})", note),
    )
    lost = await asyncio.to_thread(
        store.add,
        body.rejected,
        1,
        key.id,
        text,
        _comment(f"{body.chosen} ({better.get('model')}) preferred", note),
    )
    return {
        "object": "preference",
        "chosen": as_json(won),
        "rejected": as_json(lost),
        "pair": {
            "prompt": interaction(better, []).prompt,
            "chosen": text,
            "rejected": answer_text(worse.get("response")),
        },
    }


def _comment(what: str, note: str) -> str:
    return f"side-by-side: {what}" + (f"; {note}" if note else "")


@router.get("/feedback")
def recent_feedback(
    limit: int = Query(50, ge=1, le=1000),
    key: ApiKey = Depends(require("admin")),
    gw: Gateway = Depends(get_gateway),
) -> dict:
    rows = gw.feedback.list()[-limit:]
    return {"object": "list", "data": [as_json(f) for f in reversed(rows)]}
