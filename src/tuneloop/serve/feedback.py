"""Feedback on answers: rating (thumbs or 1-5), optional corrected answer and comment, per response id.

Stored verbatim with parameterized SQL (that, not stripping characters, is the defence against
injection); the request log holds the answer it refers to, joined by response id on export.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuneloop.serve.db import Base, connect


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(String(200), index=True)
    rating: Mapped[int] = mapped_column(Integer)  # 1-5; thumbs up = 5, down = 1
    thumbs: Mapped[str | None] = mapped_column(String(4), nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)


@dataclass
class Feedback:
    id: int
    response_id: str
    rating: int
    thumbs: str | None
    correction: str | None
    comment: str | None
    key_id: str
    created_at: datetime


class FeedbackStore:
    def __init__(self, url: str | None = None):
        self.engine = connect(url)

    def add(
        self,
        response_id: str,
        rating: int | str,
        key_id: str,
        correction: str | None = None,
        comment: str | None = None,
    ) -> Feedback:
        thumbs = rating if isinstance(rating, str) else None
        score = {"up": 5, "down": 1}[rating] if isinstance(rating, str) else rating
        row = FeedbackRow(
            response_id=response_id,
            rating=score,
            thumbs=thumbs,
            correction=correction,
            comment=comment,
            key_id=key_id,
            created_at=datetime.now(timezone.utc).replace(tzinfo=None),
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return _record(row)

    def list(self, response_id: str | None = None) -> list[Feedback]:
        query = select(FeedbackRow).order_by(FeedbackRow.id)
        if response_id is not None:
            query = query.where(FeedbackRow.response_id == response_id)
        with Session(self.engine) as s:
            return [_record(r) for r in s.scalars(query)]


def _record(r: FeedbackRow) -> Feedback:
    return Feedback(r.id, r.response_id, r.rating, r.thumbs, r.correction, r.comment, r.key_id, r.created_at)


def as_json(f: Feedback) -> dict[str, Any]:
    return {**asdict(f), "created_at": f.created_at.isoformat()}


def export(store: FeedbackStore, log_path: Path) -> Iterator[dict[str, Any]]:
    """Feedback joined with the logged request and response (current and rotated log files)."""
    items = store.list()
    wanted = {f.response_id for f in items}
    logged: dict[str, dict[str, Any]] = {}
    for path in sorted(log_path.parent.glob(log_path.name + "*")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                if record.get("response_id") in wanted:
                    logged[record["response_id"]] = record
    for f in items:
        record = logged.get(f.response_id, {})
        yield {
            **as_json(f),
            "model": record.get("model"),
            "variant": record.get("variant"),
            "request": record.get("request"),
            "response": record.get("response"),
        }
