"""User-facing errors: a message that names what is wrong and a hint that says how to fix it.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TuneloopError(Exception):
    """A mistake the user can fix (bad input, missing file, impossible numbers)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(TuneloopError):
    """A config file or override is wrong; the message names the file, line and key."""


class ModelNotFoundError(TuneloopError):
    """A model reference resolves to nothing."""


class PullError(TuneloopError):
    """Obtaining a model failed; nothing half-written is left behind."""


def missing_extra(package: str, extra: str) -> TuneloopError:
    """The error for an optional dependency that is not installed (gpt-fast / datatrove style)."""
    return TuneloopError(
        f"this feature needs the package '{package}', which is not installed",
        hint=f"pip install 'tuneloop[{extra}]'",
    )
