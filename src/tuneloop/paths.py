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


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a crash leaves the old file or
    the new one, never half of one (state files that a rerun resumes from)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Fail now, by name, when folder `path` cannot be created or written (before hours of work that
    would end in a PermissionError). Creates nothing: a probe file in the folder, or a probe folder in
    its nearest existing parent, is made and removed at once (as root, only trying tells)."""
    import tempfile

    from tuneloop.errors import TuneloopError

    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise TuneloopError(
            f"{what} '{path}' cannot be created: '{existing}' is a file, not a folder",
            hint="choose another path",
        )
    try:
        if existing == target:
            with tempfile.TemporaryFile(dir=target):
                pass
        else:
            tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        raise TuneloopError(
            f"{what} '{path}' is not writable: {e.strerror or e} (in '{existing}')",
            hint="choose a folder you can write to, or fix its permissions",
        ) from None
    return target
