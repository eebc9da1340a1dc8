"""Collect: the gateway's logged answers and their feedback since the last cycle, for one served name.

Feedback is the unit: each new rating (id above the cursor) brings its answer from the request log
(current and rotated files); an answer is kept with every rating it has, old ones included, so the
agreement rule sees all raters. Answers are filtered by variant, workload tag and API key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.loop.config import CollectSettings


@dataclass
class Rating:
    id: int
    rating: int  # 1-5 (thumbs up = 5, down = 1)
    key_id: str
    correction: str | None = None
    comment: str | None = None
    user: str | None = None  # the end user who rated (a rater is key id + user)


@dataclass
class Interaction:
    """One logged answer with every rating it got."""

    response_id: str
    request_id: str | None
    key_id: str | None
    model: str | None
    variant: str | None
    model_version: str | None
    time: float
    status: int | None
    prompt: list[dict[str, str]] | None  # chat messages up to the answer (None: not a text prompt)
    answer: str | None
    ratings: list[Rating] = field(default_factory=list)
    workload: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Interaction:
        return cls(**{**d, "ratings": [Rating(**r) for r in d.get("ratings", [])]})


@dataclass
class Batch:
    interactions: list[Interaction]
    unmatched: list[dict[str, Any]]  # ratings whose answer is not in the log (counted, never silent)
    filtered: dict[str, int]  # answers left out by the collect filters, by reason
    cursor: dict[str, Any]  # what a finished cycle stores as the new cursor

    def to_json(self) -> dict[str, Any]:
        return {"interactions": [i.to_json() for i in self.interactions], "unmatched": self.unmatched,
                "filtered": self.filtered, "cursor": self.cursor}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Batch:
        return cls(
            [Interaction.from_json(i) for i in d["interactions"]], d["unmatched"], d["filtered"], d["cursor"]
        )


def log_path(settings: CollectSettings) -> Path:
    from tuneloop.serve.requestlog import default_path

    return Path(settings.log_path).expanduser() if settings.log_path else default_path()


def read_log(path: Path, wanted: set[str] | None = None, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Log records by response id (rotated files too), optionally only `wanted` ids or newer than `since`."""
    found: dict[str, dict[str, Any]] = {}
    for file in sorted(path.parent.glob(path.name + "*"), reverse=True):  # oldest rotation first
        if file.suffix == ".tmp" or not file.is_file():
            continue
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write: not an answer anyone rated
                rid = record.get("response_id")
                if rid and (wanted is None or rid in wanted) and record.get("time", 0.0) >= since:
                    found[rid] = record
    return found


def collect(settings: CollectSettings, model: str, cursor: dict[str, Any]) -> Batch:
    from tuneloop.serve.feedback import FeedbackStore

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


def interaction(record: dict[str, Any], ratings: list[Rating]) -> Interaction:
    request = record.get("request") or {}
    # OpenAI's `metadata` tags, logged with the record (and inside the request as it was received)
    metadata = next((m for m in (record.get("metadata"), request.get("metadata")) if isinstance(m, dict)), {})
    return Interaction(
        response_id=record["response_id"], request_id=record.get("request_id"), key_id=record.get("key_id"),
        model=record.get("model"), variant=record.get("variant"), model_version=record.get("model_version"),
        time=float(record.get("time", 0.0)), status=record.get("status"), prompt=_prompt(request),
        answer=answer_text(record.get("response")), ratings=ratings,
        workload=record.get("workload") or metadata.get("workload"),
    )  # fmt: skip


def _prompt(request: dict[str, Any]) -> list[dict[str, str]] | None:
    messages = request.get("messages")
    if isinstance(messages, list):
        return [{"role": str(m.get("role")), "content": _content(m.get("content"))} for m in messages]
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return None  # token ids or several prompts: not something a person rated as text


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def answer_text(response: Any) -> str | None:
    """The first choice's text: chat (`message.content`), completion or streamed (`text`)."""
    if not isinstance(response, dict) or not response.get("choices"):
        return None
    first = response["choices"][0]
    message = first.get("message")
    if isinstance(message, dict):
        return message.get("content")
    return first.get("text")


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
