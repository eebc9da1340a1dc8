"""API keys: created once and shown once, stored as a sha256 hash, compared in constant time.

A key reads `tl-<id>-<secret>`: the id finds the row (and names the key in logs and metrics), the
hash of the whole key is what is compared. Keys carry scopes, allowed models, quotas and an expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuneloop.errors import TuneloopError
from tuneloop.interactions.db import Base, connect

SCOPES = ("inference", "feedback", "admin")
LAST_USED_EVERY = timedelta(seconds=30)
MAX_QUOTA = 2**31 - 1  # a 32-bit INTEGER column everywhere (Postgres too)
MAX_EXPIRES_DAYS = 36500  # write last-used at most this often (not on every request)


class KeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))
    models: Mapped[str] = mapped_column(String(2000), default="*")
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass
class ApiKey:
    id: str
    name: str
    scopes: list[str]
    models: list[str]  # ["*"] = every model
    rpm: int | None = None
    tpm: int | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def allows_model(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    @classmethod
    def from_row(cls, r: KeyRow) -> ApiKey:
        return cls(
            r.id,
            r.name,
            r.scopes.split(","),
            r.models.split(","),
            r.rpm,
            r.tpm,
            r.created_at,
            r.expires_at,
            r.revoked_at,
            r.last_used_at,
        )


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive UTC (SQLite has no time zones)


class KeyStore:
    def __init__(self, url: str | None = None):
        self.engine = connect(url)

    def create(
        self,
        name: str,
        scopes: list[str] | None = None,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_days: float | None = None,
    ) -> tuple[str, ApiKey]:
        """Return (the secret key, shown once, and its record)."""
        scopes = scopes or ["inference", "feedback"]
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            raise TuneloopError(f"unknown scope {unknown[0]!r}", hint=f"scopes: {', '.join(SCOPES)}")
        for field, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not 1 <= value <= MAX_QUOTA:
                raise TuneloopError(f"{field} must be between 1 and {MAX_QUOTA}, not {value}")
        if expires_days is not None and not 0 < expires_days <= MAX_EXPIRES_DAYS:
            raise TuneloopError(
                f"expires_days must be more than 0 and at most {MAX_EXPIRES_DAYS} (100 years)"
            )
        key_id = secrets.token_hex(6)
        key = f"tl-{key_id}-{secrets.token_urlsafe(32)}"
        expires = _now() + timedelta(days=expires_days) if expires_days else None
        row = KeyRow(
            id=key_id,
            name=name,
            hash=_hash(key),
            scopes=",".join(scopes),
            models=",".join(models or ["*"]),
            rpm=rpm,
            tpm=tpm,
            created_at=_now(),
            expires_at=expires,
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            record = ApiKey.from_row(row)
        return key, record

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if it is valid now (known, matching, not revoked, not expired)."""
        parts = key.split("-", 2)
        if len(parts) != 3 or parts[0] != "tl":
            return None
        with Session(self.engine) as s, s.begin():
            row = s.get(KeyRow, parts[1])
            if row is None or not hmac.compare_digest(row.hash, _hash(key)):
                return None
            now = _now()
            if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                return None
            if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:
                row.last_used_at = now
            return ApiKey.from_row(row)

    def list(self) -> list[ApiKey]:
        with Session(self.engine) as s:
            return [ApiKey.from_row(r) for r in s.scalars(select(KeyRow).order_by(KeyRow.created_at))]

    def revoke(self, key_id: str) -> ApiKey:
        with Session(self.engine) as s, s.begin():
            row = s.get(KeyRow, key_id)
            if row is None:
                raise TuneloopError(
                    f"no API key with id {key_id!r}", hint="`tuneloop keys list` shows the ids"
                )
            row.revoked_at = row.revoked_at or _now()
            return ApiKey.from_row(row)
