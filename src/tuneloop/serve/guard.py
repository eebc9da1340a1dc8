"""Input checks beyond the schema: control characters and the deny patterns of the config.

User text is otherwise kept verbatim: stored with parameterized SQL and escaped on any HTML
output, which (not stripping characters) is the real defence against injection and XSS.

A prompt sent as token ids is decoded with the served model's tokenizer and the deny patterns run
on that text, so the same words cannot slip through as numbers. A model without a tokenizer in the
gateway (an upstream) cannot be checked that way: with deny patterns set, its token-id prompts are
refused rather than passed unchecked.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from tuneloop.serve.client import EngineClient
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
            self.check_denied(text)

    def check_denied(self, text: str) -> None:
        for pattern, reason in self.deny:
            if pattern.search(text):
                raise APIError(400, reason, "content_denied")

    async def check_ids(self, client: EngineClient, ids: list[int]) -> None:
        """The deny patterns on the text that `ids` stand for in `client`'s tokenizer.

        Control characters are not checked here: they are refused in JSON text because a prompt
        never needs them, while a token id is the model's own vocabulary (byte tokens included).
        """
        if not self.deny:
            return  # nothing to look for: no decoding cost
        tokenizer = client.tokenizer
        if tokenizer is None:
            raise APIError(
                400,
                "this model's prompts cannot be checked against input.deny when given as token ids "
                "(the gateway has no tokenizer for it): send the prompt as text",
                "invalid_value",
                "prompt",
            )
        try:  # off the event loop: a 32k-token prompt takes milliseconds to decode
            text = await asyncio.to_thread(tokenizer.decode, ids, skip_special_tokens=False)
        except (OverflowError, TypeError, ValueError, IndexError) as e:
            raise APIError(
                400, f"the prompt's token ids cannot be decoded: {e}", "invalid_value", "prompt"
            ) from None
        self.check_denied(text)


def check_characters(text: str | None) -> None:
    bad = _CONTROL.search(text or "")
    if bad:
        raise APIError(400, f"character U+{ord(bad.group()):04X} is not allowed", "invalid_character")
