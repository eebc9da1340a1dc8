"""Alias history replay: rollback is a stack pop, robust to deletions and to aliases moved elsewhere."""

from __future__ import annotations

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.registry.aliases import entry, rollback_target, stack
from tuneloop.registry.refs import is_registry_ref, parse_ref


def history(*steps: tuple[str, int | None]) -> list[dict]:
    return [entry("production", v, action, None) for action, v in steps]


def test_stack_pops_on_rollback():
    h = history(("promote", 1), ("promote", 2), ("promote", 3), ("rollback", 2))
    assert stack(h, "production") == [1, 2]
    assert rollback_target(h, "production", 2, {1, 2, 3}) == 1


def test_rollback_skips_versions_deleted_since():
    h = history(("promote", 1), ("promote", 2), ("promote", 3))
    assert rollback_target(h, "production", 3, {1, 3}) == 1


def test_an_alias_moved_outside_tuneloop_counts_as_the_current_version():
    h = history(("promote", 1), ("promote", 2))
    assert rollback_target(h, "production", 5, {1, 2, 5}) == 2  # 5 was set in the MLflow UI


def test_other_aliases_do_not_count_and_a_first_version_cannot_roll_back():
    h = [entry("staging", 7, "promote", None), *history(("promote", 1))]
    with pytest.raises(TuneloopError, match="no earlier version"):
        rollback_target(h, "production", 1, {1, 7})


@pytest.mark.parametrize(
    ("ref", "ok"),
    [("acme@production", True), ("acme/3", True), ("Qwen/Qwen2.5-0.5B", False), ("./acme/3", False),
     ("acme", False), ("/abs/path", False), ("org/model-7b", False)],
)  # fmt: skip
def test_registry_reference_forms(ref, ok):
    assert is_registry_ref(ref) is ok


def test_parse_ref_accepts_mlflow_models_uris():
    assert parse_ref("models:/acme@production").alias == "production"
    assert parse_ref("models:/acme/4").version == 4
    assert parse_ref("acme").version is None
    with pytest.raises(TuneloopError, match="not a registry reference"):
        parse_ref("acme/v4")
