"""The serving database (keys, feedback, answered responses): SQLAlchemy, SQLite in TUNELOOP_HOME/serve.

A URL in the config (`postgresql://…`) moves it to a shared server when several replicas serve.
A SQLite file is owner-only (0600, in a 0700 folder when it is TUNELOOP_HOME/serve); SQLite gives
its journal and WAL files the database file's mode.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import Engine, String, create_engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tuneloop import paths
from tuneloop.interactions.permissions import private_dir, private_file, tighten


class Base(DeclarativeBase):
    pass


class SettingRow(Base):
    """Values the server makes once and every replica must share (the pseudonym key)."""

    __tablename__ = "serve_settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


def default_url() -> str:
    return f"sqlite:///{paths.serve_dir() / 'serve.db'}"


def connect(url: str | None = None) -> Engine:
    url = url or default_url()
    args = {"check_same_thread": False} if url.startswith("sqlite") else {}
    _private_sqlite(url)
    engine = create_engine(url, connect_args=args)
    Base.metadata.create_all(engine)
    return engine


def _private_sqlite(url: str) -> None:
    """Create the SQLite file owner-only before SQLite does (it would follow the umask: 0644)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).expanduser().resolve()
    private_dir(path.parent, ours=path.parent == paths.serve_dir(create=False))
    private_file(path)
    for suffix in ("-journal", "-wal", "-shm"):  # left by an older server: may hold recent rows
        tighten(path.with_name(path.name + suffix))


def secret(engine: Engine, name: str, nbytes: int = 32) -> bytes:
    """A random secret made on first use and shared through the database (replicas race: one wins)."""
    with Session(engine) as s:
        row = s.get(SettingRow, name)
        if row is not None:
            return bytes.fromhex(row.value)
    try:
        with Session(engine) as s, s.begin():
            s.add(SettingRow(name=name, value=secrets.token_hex(nbytes)))
    except IntegrityError:  # another replica made it first: use theirs
        pass
    with Session(engine) as s:
        return bytes.fromhex(s.get(SettingRow, name).value)
