"""Where tuneloop keeps its state: TUNELOOP_HOME (default ~/.cache/tuneloop).

models/      model store: one HF folder per model, plus tuneloop.json (source, checksums)
mlflow.db    MLflow tracking + registry (SQLite)
artifacts/   MLflow artifact root
runs/        training runs
serve/       serving state (keys, request logs, feedback)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_HOME = "TUNELOOP_HOME"


def home() -> Path:
    """The tuneloop home folder; read on every call so tests can point it elsewhere."""
    raw = os.environ.get(ENV_HOME)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "tuneloop"
    return path.resolve()


def _sub(name: str, create: bool) -> Path:
    path = home() / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir(create: bool = True) -> Path:
    return _sub("models", create)


def runs_dir(create: bool = True) -> Path:
    return _sub("runs", create)


def artifacts_dir(create: bool = True) -> Path:
    return _sub("artifacts", create)


def serve_dir(create: bool = True) -> Path:
    return _sub("serve", create)


def mlflow_db() -> Path:
    home().mkdir(parents=True, exist_ok=True)
    return home() / "mlflow.db"


def mlflow_tracking_uri() -> str:
    return f"sqlite:///{mlflow_db()}"


@contextmanager
def exclusive(folder: Path, busy: str, hint: str) -> Iterator[None]:
    """Hold `folder/.lock` while the block runs; a second holder fails at once with `busy` (no waiting)."""
    from filelock import FileLock, Timeout

    from tuneloop.errors import TuneloopError

    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TuneloopError(busy, hint=hint) from None
    try:
        yield
    finally:
        lock.release()
