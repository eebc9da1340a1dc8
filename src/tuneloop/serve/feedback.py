"""Feedback on answers: rating (thumbs or 1-5), optional corrected answer and comment, per response id.

Stored verbatim with parameterized SQL (that, not stripping characters, is the defence against
injection); the request log holds the answer it refers to, joined by response id on export.

Each rating names its rater: the API key and the end user (`user`, as given with the feedback, else
the `user` of the rated request, else the key id), so several people behind one key count apart.
`RecentResponses` maps the gateway's recent answers to (model, variant, user) for that fallback and
for the feedback metrics, in bounded memory.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, inspect, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuneloop.serve.db import Base, connect

USER_MAX = 256  # characters of an end-user id kept


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
    # the end user who rated ("user" is reserved in SQL, hence the column name)
    user: Mapped[str | None] = mapped_column("end_user", String(USER_MAX), nullable=True)


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
    user: str | None = None


class FeedbackStore:
    def __init__(self, url: str | None = None):
        self.engine = connect(url)
        _add_user_column(self.engine)

    def add(
        self,
        response_id: str,
        rating: int | str,
        key_id: str,
        correction: str | None = None,
        comment: str | None = None,
        user: str | None = None,
    ) -> Feedback:
        thumbs = rating if isinstance(rating, str) else None
        row = FeedbackRow(
            response_id=response_id,
            rating=score(rating),
            thumbs=thumbs,
            correction=correction,
            comment=comment,
            key_id=key_id,
            user=user[:USER_MAX] if user else None,
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


def _add_user_column(engine) -> None:
    """Databases made before feedback had a user get the (nullable) column; old rows keep NULL."""
    columns = {c["name"] for c in inspect(engine).get_columns(FeedbackRow.__tablename__)}
    if "end_user" not in columns:
        with engine.begin() as c:
            c.execute(text(f"ALTER TABLE feedback ADD COLUMN end_user VARCHAR({USER_MAX})"))


def _record(r: FeedbackRow) -> Feedback:
    return Feedback(
        r.id, r.response_id, r.rating, r.thumbs, r.correction, r.comment, r.key_id, r.created_at, r.user
    )


def score(rating: int | str) -> int:
    """1-5; thumbs up = 5, down = 1."""
    return {"up": 5, "down": 1}[rating] if isinstance(rating, str) else rating


class RecentResponses:
    """response id -> (model_name, variant, user) of the gateway's most recent answers, oldest evicted.

    Bounded: at most `max_entries` (default 65,536). An entry is a response id, two shared label strings
    and a user id cut to 256 characters: under 1 KiB, so 64 MiB at the very worst and ~15 MiB with
    typical ids.
    Answers older than that, given by another replica or before a restart are looked up in the tail
    of the request log (`log_tail`), else their feedback is labelled "unknown".
    """

    def __init__(self, max_entries: int = 65_536):
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[str, str, str | None]] = OrderedDict()
        self._lock = threading.Lock()  # the feedback route runs in a worker thread

    def add(self, response_id: str, model: str, variant: str, user: str | None) -> None:
        with self._lock:
            self._items[response_id] = (model, variant, user[:USER_MAX] if user else None)
            self._items.move_to_end(response_id)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> tuple[str, str, str | None] | None:
        with self._lock:
            return self._items.get(response_id)

    def __len__(self) -> int:
        return len(self._items)


LOG_TAIL_BYTES = 4 << 20  # how much of the current request log a feedback lookup reads, at most


def log_tail(path: Path, response_id: str, max_bytes: int = LOG_TAIL_BYTES) -> dict[str, Any] | None:
    """The logged record of `response_id` among the last `max_bytes` of the current log file (bounded work
    per feedback, whatever the log's size)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            chunk = f.read(max_bytes)
    except OSError:
        return None
    needle = json.dumps(response_id).encode()
    for line in reversed(chunk.splitlines()):
        if needle in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the first, cut line of the tail
            if record.get("response_id") == response_id:
                return record
    return None


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
