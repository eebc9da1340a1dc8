"""Collect: the gateway's logged answers and their feedback since the last cycle, for one served name.

Feedback is the unit: each new rating (id above the cursor) brings its answer from the request log
(current and rotated files); an answer is kept with every rating it has, old ones included, so the
agreement rule sees all raters. Answers are filtered by variant, workload tag and API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.interactions.feedback import FeedbackStore
from tuneloop.interactions.records import Interaction, Rating, interaction
from tuneloop.interactions.requestlog import default_path, read_log
from tuneloop.loop.config import CollectSettings


@dataclass
class Batch:
    interactions: list[Interaction]
    unmatched: list[dict[str, Any]]  # ratings whose answer is not in the log (counted, never silent)
    filtered: dict[str, int]  # answers left out by the collect filters, by reason
    cursor: dict[str, Any]  # what a finished cycle stores as the new cursor

    def to_json(self) -> dict[str, Any]:
        return {
            "interactions": [i.to_json() for i in self.interactions],
            "unmatched": self.unmatched,
            "filtered": self.filtered,
            "cursor": self.cursor,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Batch:
        return cls(
            [Interaction.from_json(i) for i in d["interactions"]], d["unmatched"], d["filtered"], d["cursor"]
        )


def log_path(settings: CollectSettings) -> Path:
    return Path(settings.log_path).expanduser() if settings.log_path else default_path()


def collect(settings: CollectSettings, model: str, cursor: dict[str, Any]) -> Batch:
    served = settings.served_name or model
    every = FeedbackStore(settings.database_url).list()
    after = int(cursor.get("feedback_id", 0))
    new = [f for f in every if f.id > after]
    wanted = {f.response_id for f in new}
    records = read_log(log_path(settings), wanted) if wanted else {}
    by_response: dict[str, list[Rating]] = {}
    for f in every:
        if f.response_id in wanted:
            by_response.setdefault(f.response_id, []).append(
                Rating(f.id, f.rating, f.key_id, f.correction, f.comment, f.user)
            )
    interactions, unmatched, filtered = [], [], {}
    for rid, ratings in by_response.items():
        record = records.get(rid)
        if record is None:
            unmatched.extend(
                {"feedback_id": r.id, "response_id": rid, "reason": "not_in_request_log"} for r in ratings
            )
            continue
        item = interaction(record, ratings)
        reason = _filtered_out(settings, served, item)
        if reason:
            filtered[reason] = filtered.get(reason, 0) + 1
            continue
        interactions.append(item)
    interactions.sort(key=lambda i: i.time)
    new_cursor = {"feedback_id": max([after, *(f.id for f in new)])}
    return Batch(interactions, unmatched, filtered, new_cursor)


def _filtered_out(settings: CollectSettings, served: str, item: Interaction) -> str | None:
    if item.model != served:
        return "other_model"
    if settings.variants is not None and item.variant not in settings.variants:
        return "other_variant"
    if settings.workload is not None and item.workload != settings.workload:
        return "other_workload"
    if settings.keys is not None and item.key_id not in settings.keys:
        return "other_key"
    return None
