"""Input checks beyond the schema: control characters and the deny patterns of the config.

User text is otherwise kept verbatim: stored with parameterized SQL and escaped on any HTML
output, which (not stripping characters) is the real defence against injection and XSS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tuneloop.serve.config import InputConfig
from tuneloop.serve.errors import APIError

# C0 controls except tab, newline and carriage return, plus DEL: never meaningful in a prompt;
# lone surrogates (JSON allows "\ud800") are not text at all and cannot even be encoded back
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class InputGuard:
    def __init__(self, config: InputConfig):
        self.deny = [(re.compile(d.pattern, re.IGNORECASE), d.reason) for d in config.deny]

    def check(self, texts: Iterable[str]) -> None:
        for text in texts:
            bad = _CONTROL.search(text)
            if bad:
                raise APIError(
                    400, f"control character U+{ord(bad.group()):04X} is not allowed", "invalid_character"
                )
            for pattern, reason in self.deny:
                if pattern.search(text):
                    raise APIError(400, reason, "content_denied")


def check_characters(text: str | None) -> None:
    bad = _CONTROL.search(text or "")
    if bad:
        raise APIError(400, f"character U+{ord(bad.group()):04X} is not allowed", "invalid_character")
