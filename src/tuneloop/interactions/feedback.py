"""Feedback on answers: rating (thumbs or 1-5), optional corrected answer and comment, per response id.

Stored with parameterized SQL (that, not stripping characters, is the defence against injection);
with `log.redact_pii` on (the default) corrections and comments have PII replaced by placeholders
first, like the request log's texts, so the loop never trains on it. The request log holds the
answer a rating refers to, joined by response id on export.

Each rating names its rater: the API key and the end user (`user`, as given with the feedback, else
the `user` of the rated request, else the key id), so several people behind one key count apart.
`RecentResponses` knows which key, model, variant and user produced each answer: the recent ones
in bounded memory, all of them in the `responses` table (written in batches, purged with the
request log's retention), so a key may rate only its own answers even after a restart.
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

from sqlalchemy import DateTime, Engine, Integer, String, Text, delete, func, insert, inspect, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuneloop.interactions.db import Base, connect
from tuneloop.interactions.privacy import OFF, USER_MAX, Privacy


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
    def __init__(self, url: str | None = None, privacy: Privacy = OFF):
        self.engine = connect(url)
        self.privacy = privacy  # applied to correction and comment as they are stored
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
        """Store one rating; `user` as stored (the caller pseudonymizes end-user ids)."""
        thumbs = rating if isinstance(rating, str) else None
        row = FeedbackRow(
            response_id=response_id,
            rating=score(rating),
            thumbs=thumbs,
            correction=self.privacy.text(correction),
            comment=self.privacy.text(comment),
            key_id=key_id,
            user=user[:USER_MAX] if user else None,
            created_at=_now(),
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


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive UTC (SQLite has no time zones)


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


class ResponseRow(Base):
    """Who was answered: the key (and its end user) that may rate the answer, and what answered."""

    __tablename__ = "responses"
    response_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column("end_user", String(USER_MAX), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


@dataclass(frozen=True)
class Answered:
    model: str
    variant: str
    user: str | None  # as stored: a pseudonym by default
    key_id: str | None  # None only for log lines written before keys were recorded


class RecentResponses:
    """response id -> `Answered`: recent answers in memory (oldest evicted), every answer in the database.

    Memory is bounded: at most `max_entries` (default 65,536), each a response id, shared label strings,
    a key id and a user id of at most 256 characters: under 1 KiB, so 64 MiB at the very worst and
    ~15 MiB with typical ids. New answers wait in memory and reach the `responses` table in one
    transaction per `flush` (the server flushes every 0.5 s and at shutdown), never a write per
    request on the event loop. Without a database (`engine=None`) only memory is used.
    """

    def __init__(self, max_entries: int = 65_536, engine: Engine | None = None, privacy: Privacy = OFF):
        self.max_entries = max_entries
        self.engine = engine
        self.privacy = privacy  # end-user ids are kept as pseudonyms, in memory too
        self._items: OrderedDict[str, Answered] = OrderedDict()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the feedback route runs in a worker thread

    def add(
        self, response_id: str, model: str, variant: str, user: str | None, key_id: str | None = None
    ) -> None:
        answered = Answered(model, variant, self.privacy.user(user), key_id)
        with self._lock:
            self._items[response_id] = answered
            self._items.move_to_end(response_id)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
            if self.engine is not None and key_id is not None:
                self._pending.append({"response_id": response_id, "created_at": _now(), **asdict(answered)})
                del self._pending[: -self.max_entries]  # a long database outage: keep the newest

    def get(self, response_id: str) -> Answered | None:
        """From memory, else from the database (answers from before a restart, or from another replica)."""
        with self._lock:
            found = self._items.get(response_id)
        if found is not None or self.engine is None:
            return found
        with Session(self.engine) as s:
            row = s.get(ResponseRow, response_id)
        return None if row is None else Answered(row.model, row.variant, row.user, row.key_id)

    def flush(self) -> int:
        """Write the answers added since the last flush, in one transaction; how many."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows or self.engine is None:
            return 0
        try:
            with Session(self.engine) as s, s.begin():
                s.execute(insert(ResponseRow), rows)
        except Exception:
            with self._lock:  # retried with the next flush
                self._pending[:0] = rows
                del self._pending[: -self.max_entries]
            raise
        return len(rows)

    def purge(self, before: datetime, dry_run: bool = False) -> int:
        """Forget the answers recorded before `before` (naive UTC); how many."""
        if self.engine is None:
            return 0
        return purge_responses(self.engine, before, dry_run)

    def __len__(self) -> int:
        return len(self._items)


def purge_responses(engine: Engine, before: datetime, dry_run: bool = False) -> int:
    old = ResponseRow.created_at < before
    with Session(engine) as s, s.begin():
        if dry_run:
            return s.scalar(select(func.count()).select_from(ResponseRow).where(old)) or 0
        return s.execute(delete(ResponseRow).where(old)).rowcount or 0


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
            **as_json(f),  # key_id: the key that gave the rating
            "request_key_id": record.get("key_id"),  # the key the answer was made for
            "model": record.get("model"),
            "variant": record.get("variant"),
            "request": record.get("request"),
            "response": record.get("response"),
        }
