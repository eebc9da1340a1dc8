"""Console fixtures: admin and inference keys, a real MLflow registry per test (from the migrated template)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from registry.conftest import mlflow_template  # noqa: F401 (session fixture: the migrated MLflow db)


@pytest.fixture
def registry(tuneloop_home: Path, mlflow_template: Path):  # noqa: F811
    shutil.copy(mlflow_template, tuneloop_home / "mlflow.db")
    from tuneloop.registry import Registry

    return Registry()


@pytest.fixture
def keys() -> dict:
    """Bearer headers: `admin` (admin + inference + feedback), `user` (inference + feedback), `none`."""
    from tuneloop.serve.keys import KeyStore

    store = KeyStore()
    admin = store.create("console", ["admin", "inference", "feedback"])[0]
    user = store.create("app", ["inference", "feedback"])[0]
    return {"admin": {"Authorization": f"Bearer {admin}"}, "user": {"Authorization": f"Bearer {user}"},
            "none": {}, "secret": admin}  # fmt: skip
