"""Alias history and rollback: which version an alias pointed at, in order, kept as a model tag.

The history is a JSON list of {alias, version, previous, action, time, user} on the registered
model (tag `tuneloop.alias_history`), so it lives in the same database as the aliases and travels
with a remote registry. Rollback replays it as a stack: promote pushes, rollback pops.
"""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

from tuneloop.errors import TuneloopError

HISTORY_TAG = "tuneloop.alias_history"
MAX_ENTRIES = 500  # a tag value is bounded (100k chars in MLflow's SQL store); old entries go first


def load(model_tags: dict[str, str]) -> list[dict[str, Any]]:
    raw = model_tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:  # hand-edited in the MLflow UI: start afresh rather than fail every call
        return []
    return entries if isinstance(entries, list) else []


def dump(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries[-MAX_ENTRIES:], separators=(",", ":"))


def entry(alias: str, version: int | None, action: str, previous: int | None) -> dict[str, Any]:
    return {
        "alias": alias,
        "version": version,
        "previous": previous,
        "action": action,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "user": _user(),
    }


def stack(entries: list[dict[str, Any]], alias: str) -> list[int | None]:
    """The versions `alias` pointed at, oldest first, with rollbacks already popped off."""
    out: list[int | None] = []
    for e in entries:
        if e.get("alias") != alias:
            continue
        if e.get("action") == "rollback" and out:
            out.pop()
        if not out or out[-1] != e.get("version"):
            out.append(e.get("version"))
    return out


def rollback_target(
    entries: list[dict[str, Any]], alias: str, current: int | None, existing: set[int]
) -> int:
    """The version `alias` pointed at before `current`, skipping versions deleted since."""
    versions = stack(entries, alias)
    if not versions or versions[-1] != current:  # moved outside tuneloop (MLflow UI): that is "now"
        versions.append(current)
    for v in reversed(versions[:-1]):
        if v is not None and v != current and v in existing:
            return v
    raise TuneloopError(
        f"alias '{alias}' has no earlier version to roll back to"
        + (f" (it points at version {current})" if current is not None else " (it is not set)"),
        hint="see `tuneloop registry history NAME`; set a version with `tuneloop registry promote`",
    )


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        return None
