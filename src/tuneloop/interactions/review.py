"""The human approval queue: curated proposals wait here when `curate.approval.required` is set.

SQLAlchemy on the gateway's database by default, so `tuneloop feedback review` (terminal) and the
admin API (`/admin/review`) of any replica see the same queue. A reviewer approves, edits (the
answer to train on) or rejects (with a reason) each proposal; the loop waits while any is pending.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tuneloop.errors import TuneloopError
from tuneloop.interactions.db import default_url

STATUSES = ("pending", "approved", "rejected")


class _Base(DeclarativeBase):
    pass


class ReviewRow(_Base):
    __tablename__ = "loop_review"
    __table_args__ = (UniqueConstraint("model", "cycle", "response_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    cycle: Mapped[int] = mapped_column(Integer)
    response_id: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str] = mapped_column(String(32))  # correction | upvoted | downvoted
    prompt: Mapped[str] = mapped_column(Text)  # JSON messages
    answer: Mapped[str] = mapped_column(Text)  # what would be trained on (chosen; "" for a thumb down alone)
    rejected_answer: Mapped[str | None] = mapped_column(Text, nullable=True)  # the DPO loser, if any
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    edited: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass
class ReviewItem:
    id: int
    model: str
    cycle: int
    response_id: str
    request_id: str | None
    source: str
    prompt: list[dict[str, str]]
    answer: str
    rejected_answer: str | None
    status: str
    edited: str | None
    reason: str | None
    reviewer: str | None

    @property
    def final_answer(self) -> str:
        return self.edited if self.edited is not None else self.answer

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _item(r: ReviewRow) -> ReviewItem:
    return ReviewItem(
        r.id,
        r.model,
        r.cycle,
        r.response_id,
        r.request_id,
        r.source,
        json.loads(r.prompt),
        r.answer,
        r.rejected_answer,
        r.status,
        r.edited,
        r.reason,
        r.reviewer,
    )


class ReviewQueue:
    def __init__(self, url: str | None = None):
        url = url or default_url()
        args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, connect_args=args)
        _Base.metadata.create_all(self.engine)

    def enqueue(self, model: str, cycle: int, proposals: list[dict[str, Any]]) -> int:
        """Add proposals not queued yet for this cycle (a resumed cycle adds nothing twice)."""
        added = 0
        with Session(self.engine) as s, s.begin():
            have = set(
                s.scalars(
                    select(ReviewRow.response_id).where(ReviewRow.model == model, ReviewRow.cycle == cycle)
                )
            )
            for p in proposals:
                if p["response_id"] in have:
                    continue
                s.add(
                    ReviewRow(
                        model=model,
                        cycle=cycle,
                        response_id=p["response_id"],
                        request_id=p.get("request_id"),
                        source=p["source"],
                        prompt=json.dumps(p["prompt"], ensure_ascii=False),
                        answer=p["chosen"] or "",
                        rejected_answer=p.get("rejected"),
                        status="pending",
                        created_at=_now(),
                    )
                )
                added += 1
        return added

    def list(
        self, model: str | None = None, status: str | None = None, cycle: int | None = None
    ) -> list[ReviewItem]:
        if status is not None and status not in STATUSES:
            raise TuneloopError(f"unknown review status '{status}'", hint=f"use one of {', '.join(STATUSES)}")
        q = select(ReviewRow).order_by(ReviewRow.id)
        if model is not None:
            q = q.where(ReviewRow.model == model)
        if status is not None:
            q = q.where(ReviewRow.status == status)
        if cycle is not None:
            q = q.where(ReviewRow.cycle == cycle)
        with Session(self.engine) as s:
            return [_item(r) for r in s.scalars(q)]

    def get(self, item_id: int) -> ReviewItem:
        with Session(self.engine) as s:
            row = s.get(ReviewRow, item_id)
            if row is None:
                raise TuneloopError(
                    f"no review item {item_id}", hint="list them with `tuneloop feedback review --list`"
                )
            return _item(row)

    def approve(self, item_id: int, reviewer: str, edited: str | None = None) -> ReviewItem:
        if edited is not None and not edited.strip():
            raise TuneloopError("the edited answer is empty", hint="give the answer the model should learn")
        return self._decide(item_id, "approved", reviewer, edited=edited.strip() if edited else None)

    def reject(self, item_id: int, reviewer: str, reason: str | None = None) -> ReviewItem:
        return self._decide(item_id, "rejected", reviewer, reason=reason or "rejected by reviewer")

    def _decide(self, item_id: int, status: str, reviewer: str, **fields: Any) -> ReviewItem:
        with Session(self.engine) as s, s.begin():
            row = s.get(ReviewRow, item_id)
            if row is None:
                raise TuneloopError(
                    f"no review item {item_id}", hint="list them with `tuneloop feedback review --list`"
                )
            if row.status != "pending":
                raise TuneloopError(
                    f"review item {item_id} is already {row.status}", hint="decisions are final"
                )
            row.status, row.reviewer, row.decided_at = status, reviewer, _now()
            for k, v in fields.items():
                setattr(row, k, v)
            s.flush()
            return _item(row)
