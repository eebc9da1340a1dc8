"""Registry fixtures: a real MLflow SQLite registry per test (copied from a schema-only template, since
creating the schema takes seconds) and LoRA runs trained once per session on the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from train.conftest import base_overrides, sft_rows, write_jsonl


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELOOP_HOME", str(home))
        from tuneloop.registry import Registry

        Registry().names()  # creates and migrates mlflow.db
    return home / "mlflow.db"


@pytest.fixture(autouse=True)
def _registry_db(tuneloop_home: Path, mlflow_template: Path) -> None:
    shutil.copy(mlflow_template, tuneloop_home / "mlflow.db")


def train_run(base: Path | str, out: Path, **extra) -> Path:
    from tuneloop.config import load_config
    from tuneloop.train.config import TrainConfig
    from tuneloop.train.recipe import run

    data = out.parent / f"{out.name}-data"
    write_jsonl(data / "train.jsonl", sft_rows(16))
    write_jsonl(data / "val.jsonl", sft_rows(4))
    return run(load_config(TrainConfig, None, base_overrides(base, data, out, **extra))).run_dir


@pytest.fixture(scope="session")
def adapter_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run (with eval metrics) on the session's tiny model; tests must not modify it."""
    root = tmp_path_factory.mktemp("adapter-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELOOP_HOME", str(root / "home"))
        return train_run(tiny_llama, root / "run", **{"eval.final": "true", "eval.max_samples": 2,
                                                      "eval.max_new_tokens": 4})  # fmt: skip


@pytest.fixture
def registry():
    from tuneloop.registry import Registry

    return Registry()
