"""POST /v1/feedback: a rating (and optional correction, comment) for an answer, by response id.

The rater is the key plus an end user: the feedback's `user`, else the rated request's `user`, else
the key id. The rating is counted in tuneloop_feedback_total and tuneloop_feedback_score, labelled
with the model and variant that gave the answer (from `RecentResponses`, else the request log's tail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from tuneloop.serve.auth import require
from tuneloop.serve.feedback import as_json, log_tail, score
from tuneloop.serve.guard import check_characters
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import FeedbackRequest

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback")
def post_feedback(
    body: FeedbackRequest, request: Request, key: ApiKey = Depends(require("feedback"))
) -> dict:
    for text in (body.response_id, body.correction, body.comment, body.user):
        check_characters(text)
    state = request.app.state
    model, variant, user = _answered_by(state, body.response_id)
    record = state.feedback.add(
        body.response_id, body.rating, key.id, body.correction, body.comment, user=body.user or user or key.id
    )
    state.metrics.feedback.labels(model, variant, str(body.rating)).inc()
    state.metrics.feedback_score.labels(model, variant).observe(score(body.rating))
    return {"object": "feedback", **as_json(record)}


def _answered_by(state: Any, response_id: str) -> tuple[str, str, str | None]:
    """(model_name, variant, user) of a response; ("unknown", "unknown", None) when not found."""
    found = state.recent_responses.get(response_id)
    if found is not None:
        return found
    if state.request_log is not None:  # answered before a restart, or long ago: the log's tail (bounded)
        record = log_tail(Path(state.request_log.path), response_id)
        if record is not None and record.get("status") == 200:
            request = record.get("request") if isinstance(record.get("request"), dict) else {}
            user = record.get("user") or request.get("user")
            return (
                str(record.get("model")),
                str(record.get("variant")),
                user if isinstance(user, str) else None,
            )
    return "unknown", "unknown", None
