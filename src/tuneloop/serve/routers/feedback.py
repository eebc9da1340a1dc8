"""POST /v1/feedback: a rating (and optional correction, comment) for an answer, by response id.

Only the key an answer was made for may rate it (keys have no team: a product that rates from its
front end uses the key it asks with), and an `admin` key may rate any answer (operators, the
console); any other key, like an id never answered, gets a 404 (not a 403, so that response ids of
other keys cannot be probed). The answering key is found in memory, else in the database's
`responses` table (after a restart, or from another replica), else in the request log's tail.

The rater is the key plus an end user: the feedback's `user`, else the rated request's `user` (only
when the key that asked rates), else the key id; end-user ids are stored as pseudonyms. The rating
is counted in tuneloop_feedback_total and tuneloop_feedback_score, labelled with the model and
variant that gave the answer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from tuneloop.interactions.feedback import Answered, as_json, log_tail, score
from tuneloop.interactions.privacy import Privacy, is_pseudonym
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.gateway import Gateway, get_gateway
from tuneloop.serve.guard import check_characters
from tuneloop.serve.keys import ApiKey
from tuneloop.serve.protocol import FeedbackRequest

router = APIRouter(tags=["feedback"], route_class=AuthFirst)


@router.post("/v1/feedback", responses=documented(404, s404="No answer of that id was given to this key"))
def post_feedback(
    body: FeedbackRequest, key: ApiKey = Depends(require("feedback")), gw: Gateway = Depends(get_gateway)
) -> dict:
    for text in (body.response_id, body.correction, body.comment, body.user):
        check_characters(text)
    answered = _answered_by(gw, body.response_id)
    if answered is None or not may_rate(key, answered):
        raise APIError(
            404,
            f"no answer '{body.response_id}' was given to this API key (feedback is accepted from the "
            "key that made the request, or an admin key)",
            "response_not_found",
            "response_id",
        )
    own = answered.key_id == key.id
    user = gw.privacy.user(body.user) or (answered.user if own else None) or key.id
    record = gw.feedback.add(body.response_id, body.rating, key.id, body.correction, body.comment, user)
    gw.metrics.feedback.labels(answered.model, answered.variant, str(body.rating)).inc()
    gw.metrics.feedback_score.labels(answered.model, answered.variant).observe(score(body.rating))
    return {"object": "feedback", **as_json(record)}


def may_rate(key: ApiKey, answered: Answered) -> bool:
    return answered.key_id == key.id or "admin" in key.scopes


def _answered_by(gw: Gateway, response_id: str) -> Answered | None:
    """Who was given a response, and by which model; None when it was never answered (or purged)."""
    found = gw.recent_responses.get(response_id)
    if found is not None:
        return found
    if gw.request_log is not None:  # answered before the responses table existed: the log's tail
        record = log_tail(Path(gw.request_log.path), response_id)
        if record is not None and record.get("status") == 200:
            user, key_id = record.get("user"), record.get("key_id")
            return Answered(
                str(record.get("model")),
                str(record.get("variant")),
                _as_stored(gw.privacy, user) if isinstance(user, str) else None,
                key_id if isinstance(key_id, str) else None,
            )
    return None


def _as_stored(privacy: Privacy, user: str) -> str | None:
    """A logged user as the feedback store keeps it: lines written before pseudonyms hold the raw id."""
    return user if privacy.pseudonym_key is None or is_pseudonym(user) else privacy.user(user)
