"""What the gateway stores about people: texts with PII redacted, end users as keyed pseudonyms.

Texts (prompts, answers, feedback corrections and comments) go through the data stage's detectors,
the ones `data prepare` uses (emails, phones, Chinese resident IDs, bank cards, IPs), by
`redact_text`, the single call into them. OpenAI's `user` names a person: it is stored as
`u-<24 hex>`, an HMAC-SHA256 of the id under a secret kept in the serving database. The same user
always gets the same pseudonym (across restarts and replicas sharing the database), so the loop
still counts raters apart; without the secret nobody can test a guessed email against it, as one
could against a plain hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from tuneloop.data.config import PII_TYPES
from tuneloop.data.pii import redact

USER_MAX = 256  # characters of an end-user id kept when pseudonyms are off
MIN_PII_CHARS = 6  # the shortest item any detector finds: an email a@b.cc (IPs 7, phones 7+ digits)
# fields of OpenAI's request and response objects that name things of the protocol, never people
LABELS = frozenset({"model", "role", "object", "id", "type", "finish_reason", "system_fingerprint"})
PSEUDONYM_PREFIX = "u-"
_PSEUDONYM = re.compile(r"u-[0-9a-f]{24}")


# what `redact` puts in place of an item of each type: <EMAIL>, <ID_CARD>, ...
_PLACEHOLDER = re.compile("<(" + "|".join(t.upper() for t in PII_TYPES) + ")>")


def redact_text(text: str) -> str:
    """`text` with each PII item replaced by its typed placeholder (<EMAIL>, <ID_CARD>, ...)."""
    return redact(text)


def placeholders(text: str) -> list[str]:
    """The PII types already redacted in a stored text, one per placeholder (for the loop's counts)."""
    return [m.group(1).lower() for m in _PLACEHOLDER.finditer(text)] if "<" in text else []


class Privacy:
    """The gateway's storage policy: `log.redact_pii` and `log.pseudonymize_users` of the config."""

    def __init__(self, redact_pii: bool = True, pseudonym_key: bytes | None = None):
        self.redact_pii = redact_pii
        self.pseudonym_key = pseudonym_key  # None: user ids are stored as given (cut to 256 characters)

    def text(self, text: str | None) -> str | None:
        return redact_text(text) if self.redact_pii and text else text

    def value(self, value: Any) -> Any:
        """Every string inside a JSON-like value redacted, but for the protocol's own labels (a role,
        a model name, an id) and strings too short to hold any PII: each redaction call costs tens of
        microseconds however short its text, and a chat record has a dozen such labels."""
        if not self.redact_pii:
            return value
        if isinstance(value, str):
            return redact_text(value) if len(value) >= MIN_PII_CHARS else value
        if isinstance(value, dict):
            return {k: v if k in LABELS else self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def user(self, user: str | None) -> str | None:
        """The stored form of an end-user id: its pseudonym, or the id itself when pseudonyms are off."""
        if not user:
            return None
        if self.pseudonym_key is None:
            return user[:USER_MAX]
        digest = hmac.new(self.pseudonym_key, user.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return PSEUDONYM_PREFIX + digest.hexdigest()[:24]


def is_pseudonym(user: str) -> bool:
    return _PSEUDONYM.fullmatch(user) is not None


OFF = Privacy(redact_pii=False)  # readers (export, the loop) that store nothing new
