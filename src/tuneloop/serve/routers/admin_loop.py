"""Admin routes for the feedback loop (the `admin` scope): what `tuneloop loop status` shows.

GET /admin/loop                               every model with a loop: cycle, stage, outcome, last decision
GET /admin/loop/{name}?last=50                its state, cursor and the last decisions with their numbers
GET /admin/loop/{name}/cycles/{cycle}/checks  the automatic checks of that cycle's curation: per proposal
                                              (by response id) raters, agreement, source, and the
                                              rejections by reason (PII, injection, duplicates, ...)

State lives under TUNELOOP_HOME/loop/NAME on the gateway's machine (the loop and the gateway share it).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Path, Query

from tuneloop.errors import TuneloopError
from tuneloop.interactions.loopstore import LoopStore, loop_dir, models, status
from tuneloop.serve.auth import AuthFirst, require
from tuneloop.serve.errors import APIError, documented
from tuneloop.serve.keys import ApiKey

router = APIRouter(prefix="/admin/loop", tags=["admin"], route_class=AuthFirst)
NAME = Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.-]*$")


def _status(name: str) -> dict[str, Any]:
    try:
        return status(name)
    except TuneloopError as e:
        raise APIError(404, e.message, "loop_not_found") from None


@router.get("")
def list_loops(key: ApiKey = Depends(require("admin"))) -> dict:
    rows = []
    for name in models():
        try:
            s = _status(name)
        except APIError:
            continue  # a folder without state yet
        st, decisions = s["state"], s["decisions"]
        rows.append(
            {
                "model": name,
                "cycle": st.get("cycle"),
                "stage": st.get("stage"),
                "outcome": st.get("outcome"),
                "last_decision": decisions[-1] if decisions else None,
            }
        )
    return {"object": "list", "data": rows}


@router.get("/{name}", responses=documented(404, s404="No loop has run for that model"))
def loop_status(
    name: str = NAME, last: int = Query(50, ge=1, le=1000), key: ApiKey = Depends(require("admin"))
) -> dict:
    s = _status(name)
    return {**s, "decisions": s["decisions"][-last:], "decisions_total": len(s["decisions"])}


@router.get(
    "/{name}/cycles/{cycle}/checks",
    responses=documented(404, s404="No such loop, or the cycle has no curation yet"),
)
def cycle_checks(
    name: str = NAME,
    cycle: int = Path(ge=1, le=10**6),
    key: ApiKey = Depends(require("admin")),
) -> dict:
    if not loop_dir(name, create=False).is_dir():
        raise APIError(404, f"no loop has run for '{name}'", "loop_not_found")
    path = LoopStore(name).root / "cycles" / f"{cycle:04d}" / "curated.json"
    if not path.is_file():
        raise APIError(404, f"cycle {cycle} of '{name}' has no curation yet", "cycle_not_found")
    saved = json.loads(path.read_text(encoding="utf-8"))
    fields = ("source", "raters", "agreement", "mean_rating", "variant", "model_version", "feedback_ids")
    proposals = {p["response_id"]: {k: p.get(k) for k in fields} for p in saved.get("proposals", [])}
    reasons: dict[str, int] = {}
    for r in saved.get("rejected", []):
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {
        "model": name,
        "cycle": cycle,
        "proposals": proposals,
        "rejections": reasons,
        "rejected": saved.get("rejected", [])[:200],
        "pii_redacted": saved.get("pii", {}),
        "passed": [
            "failed_request",
            "agreement",
            "prompt_injection",
            "abuse",
            "too_long",
            "pii",
            "duplicate_exact",
            "duplicate_near",
            "conflicts_with_training_data",
        ],
    }
