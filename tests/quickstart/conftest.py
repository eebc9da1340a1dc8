"""A tiny corpus in the examples/acme-kb layout, a tiny training config, and a schema-ready registry,
so the whole quickstart runs on the tiny random model in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

KB = Path(__file__).resolve().parents[2] / "examples" / "acme-kb"
DOCS = ("faq.md", "zh-faq.md", "drift-m2-mesh-guide.md", "drift-m2-mesh-guide-copy.md")

TINY_CONFIG = """\
objective: sft
method: lora
data: {path: unused.jsonl, max_length: 64}
lora: {rank: 4, alpha: 8, dropout: 0.0}
optim: {lr: 1.0e-3, warmup_ratio: 0.0}
batch: {micro_batch: 4, global_batch: 4}
max_steps: 3
tracking: {tensorboard: false, system_metrics: false}
seed: 1
"""


def _head(path: Path, n: int) -> str:
    return "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n])


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/ (with an exact duplicate), 12 training and 4 held-out QA rows of the real corpus."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "docs").mkdir()
    for name in DOCS:
        shutil.copy(KB / "docs" / name, root / "docs" / name)
    (root / "qa").mkdir()
    (root / "qa" / "train.jsonl").write_text(_head(KB / "qa" / "train.jsonl", 12), encoding="utf-8")
    (root / "qa" / "heldout.jsonl").write_text(_head(KB / "qa" / "heldout.jsonl", 4), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny-sft-lora.yaml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("mlflow-schema")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELOOP_HOME", str(home))
        from tuneloop.registry import Registry

        Registry().names()  # creates and migrates mlflow.db once (seconds), copied per test
    return home / "mlflow.db"


@pytest.fixture(autouse=True)
def _registry_db(tuneloop_home: Path, mlflow_schema: Path) -> None:
    shutil.copy(mlflow_schema, tuneloop_home / "mlflow.db")


@pytest.fixture
def qs_args(tiny_llama: Path, tiny_corpus: Path, tiny_config: Path, tmp_path: Path) -> list[str]:
    """`tuneloop quickstart` arguments for the tiny model and corpus, in a fresh work folder."""
    return ["quickstart", "--no-serve", "--workdir", str(tmp_path / "qs"), "--model", str(tiny_llama),
            "--corpus", str(tiny_corpus), "--config", str(tiny_config), "--eval-max-new-tokens", "4"]  # fmt: skip


def state(workdir: Path) -> dict:
    return json.loads((workdir / "state.json").read_text())
