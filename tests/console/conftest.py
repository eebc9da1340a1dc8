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


CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "console"


@pytest.fixture
def browser(tmp_path: Path):
    """A fresh headless Chromium (Debian's package, driven by Playwright) with its own profile folder.

    Fails, never skips, when Chromium or Playwright is missing: .ci/setup.d/40-chromium.sh installs them.
    """
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/setup.d/40-chromium.sh)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'")
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900}, service_workers="block",
        )  # fmt: skip
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


class Shots:
    """Screenshots under the test's tmp dir, copied to .artifacts/console/ (git-ignored) for people."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS.parent / ".gitignore").write_text("*\n")

    def __call__(self, page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")
