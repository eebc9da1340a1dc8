"""The serving database (keys, feedback): SQLAlchemy, SQLite in TUNELOOP_HOME/serve by default.

A URL in the config (`postgresql://…`) moves it to a shared server when several replicas serve.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase

from tuneloop import paths


class Base(DeclarativeBase):
    pass


def default_url() -> str:
    return f"sqlite:///{paths.serve_dir() / 'serve.db'}"


def connect(url: str | None = None) -> Engine:
    url = url or default_url()
    args = {"check_same_thread": False} if url.startswith("sqlite") else {}
    engine = create_engine(url, connect_args=args)
    Base.metadata.create_all(engine)
    return engine
