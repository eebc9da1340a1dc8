"""Serving `NAME@production` from the real MLflow registry: moving the alias under load (and back).

Two versions of a tiny model are registered in MLflow; the gateway serves `bot@production` and
re-resolves it every 0.3 s. Clients using the official `openai` package send requests the whole
time while the alias moves to version 2 and is rolled back to version 1: no request fails, the
`X-Tuneloop-Model-Version` header follows the alias, and every answer is the one its version gives.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from registry.conftest import mlflow_template  # noqa: F401 (a session fixture: the migrated MLflow db)
from tuneloop.serve import ServeConfig

from .conftest import run_server

PROMPT = "The capital of France is"
CLIENTS = 4


@pytest.fixture
def registry(tuneloop_home: Path, mlflow_template: Path):  # noqa: F811
    shutil.copy(mlflow_template, tuneloop_home / "mlflow.db")
    from tuneloop.registry import Registry

    return Registry()


class Load:
    """CLIENTS threads, each with its own `openai.OpenAI`, asking until stopped; records every answer."""

    def __init__(self, base_url: str):
        self.base_url, self.stop = base_url, threading.Event()
        self.answers: list[tuple[float, str, str]] = []  # (time, version header, text)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=20)
        while not self.stop.is_set():
            try:
                raw = client.completions.with_raw_response.create(
                    model="bot", prompt=PROMPT, max_tokens=4, temperature=0
                )
                text = raw.parse().choices[0].text
                self.answers.append((time.monotonic(), raw.headers["x-tuneloop-model-version"], text))
            except Exception as e:  # every failure is a test failure, reported below
                self.failures.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.hung = sum(t.is_alive() for t in self.threads)  # a request that never finishes fails too

    def wait_for(self, version: str, after: float, timeout_s: float = 60) -> float:
        """The time of the first answer from `version` sent after `after`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hits = [t for t, v, _ in list(self.answers) if v == version and t > after]
            if hits:
                return hits[0]
            time.sleep(0.05)
        seen = sorted({v for _, v, _ in self.answers})
        raise AssertionError(f"no answer from {version} within {timeout_s}s (seen: {seen})")


def test_moving_the_registry_alias_under_load_switches_versions_without_a_failed_request(
    registry, tiny_llama, tiny_model_factory
):
    registry.register_folder(tiny_llama, "bot")
    registry.register_folder(tiny_model_factory("llama", seed=1), "bot")
    registry.promote("bot", 1, "production")
    cfg = ServeConfig.model_validate(
        {
            "models": [
                {"name": "bot", "model": "bot@production", "kv_cache_gib": 0.02, "max_concurrency": 1}
            ],
            "auth": {"enabled": False},
            "log": {"enabled": False},
            "reload_interval_s": 0.3,
        }
    )
    with run_server(cfg) as s, Load(s.url + "/v1") as load:
        first_client = s.gateway.models["bot"].client
        load.wait_for("bot/1", after=0)
        moved_at = time.monotonic()
        registry.promote("bot", 2, "production")  # the registry API
        switched = load.wait_for("bot/2", after=moved_at)
        time.sleep(3.0)  # more requests on version 2 (a loaded machine answers slowly)
        back_at = time.monotonic()
        rolled = CliRunner().invoke(_cli(), ["registry", "rollback", "bot", "--alias", "production"])
        assert rolled.exit_code == 0, rolled.output  # the CLI, as an operator does it
        load.wait_for("bot/1", after=back_at)
        time.sleep(0.5)
    assert not load.failures and not load.hung, (load.failures[:3], load.hung)
    texts = {v: {t for _, v2, t in load.answers if v2 == v} for v in ("bot/1", "bot/2")}
    assert len(texts["bot/1"]) == len(texts["bot/2"]) == 1  # greedy: one answer per version...
    assert texts["bot/1"] != texts["bot/2"]  # ...and the header names the version that gave it
    on_2 = [v for t, v, _ in load.answers if switched + 1 < t < back_at]
    assert on_2 and set(on_2) == {"bot/2"}  # once switched, new requests stay on the new version
    assert first_client.active == 0  # the replaced version drained before it was closed


def _cli():
    from tuneloop.cli import app

    return app
