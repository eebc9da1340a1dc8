"""POST /v1/feedback: a rating (and optional correction, comment) for an answer, by response id."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import require
from tuneloop.serve.feedback import as_json
from tuneloop.serve.guard import check_characters
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import FeedbackRequest

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback")
def post_feedback(
    body: FeedbackRequest, request: Request, key: ApiKey = Depends(require("feedback"))
) -> dict:
    for text in (body.response_id, body.correction, body.comment):
        check_characters(text)
    record = request.app.state.feedback.add(
        body.response_id, body.rating, key.id, body.correction, body.comment
    )
    return {"object": "feedback", **as_json(record)}
