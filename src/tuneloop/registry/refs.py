"""Registry references: `NAME@alias`, `NAME/VERSION` and plain `NAME` (its latest version).

`NAME/VERSION` needs an all-digit version so that hub ids (`org/name`) never look like one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneloop.errors import TuneloopError

NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
ALIAS = re.compile(r"^[A-Za-z_][\w-]*$")  # MLflow's alias rule, minus `v1`-style names it reserves
ALIAS_REF = re.compile(r"^(?P<name>[\w.-]+)@(?P<alias>[\w.-]+)$")
VERSION_REF = re.compile(r"^(?P<name>[\w.-]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        return f"{self.name}/{self.version}" if self.version is not None else self.name


def is_registry_ref(ref: str) -> bool:
    """True for `NAME@alias` and `NAME/VERSION` (what `resolve_model` sends to the registry)."""
    return not ref.startswith(".") and bool(ALIAS_REF.match(ref) or VERSION_REF.match(ref))


def parse_ref(ref: str) -> Ref:
    """Parse a reference; `models:/NAME/1` and `models:/NAME@alias` (MLflow's spelling) work too."""
    text = ref.strip().removeprefix("models:/")
    if m := ALIAS_REF.match(text):
        return Ref(check_name(m["name"]), alias=check_alias(m["alias"]))
    if m := VERSION_REF.match(text):
        return Ref(check_name(m["name"]), version=int(m["version"]))
    if NAME.match(text):
        return Ref(text)
    raise TuneloopError(
        f"'{ref}' is not a registry reference",
        hint="use NAME (latest version), NAME/VERSION (e.g. acme/3) or NAME@alias (e.g. acme@production)",
    )


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise TuneloopError(
            f"'{name}' is not a valid registered model name",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit (e.g. acme-support)",
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.match(alias or "") or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise TuneloopError(
            f"'{alias}' is not a valid alias",
            hint="use a word such as production, candidate or staging "
            "(letters, digits, '_' and '-'; 'latest' and 'v1'-style names are reserved by MLflow)",
        )
    return alias
