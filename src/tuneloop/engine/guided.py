"""What a request's output must match (structured outputs, forced tool calls): the spec only.

The gateway turns OpenAI's `response_format` and `tool_choice` into one of these; the engine compiles
it to a token-level grammar once per distinct spec (cached by `key`) and masks each guided row's
logits in the sampler, so the output parses by construction. Exactly one field is set. Schemas and
grammars travel as text: the spec crosses the engine-process pipe and is hashed for the cache, and
text hashes the same wherever it was built (a dict's key order would not).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

KINDS = ("json_schema", "json_object", "regex", "grammar", "choice")


@dataclass(frozen=True)
class GuidedDecoding:
    json_schema: str | None = None  # a JSON Schema, as JSON text
    json_object: bool = False  # any JSON object (OpenAI's {"type": "json_object"})
    regex: str | None = None
    grammar: str | None = None  # EBNF (GBNF dialect, as llama.cpp / xgrammar take it)
    choice: tuple[str, ...] | None = None  # exactly one of these strings
    # JSON only: white space between tokens as a compact serializer writes it (`{"a": 1}`); without
    # it a model may pad with newlines until max_tokens, which a schema cannot forbid
    compact_whitespace: bool = True
    name: str = field(default="", compare=False)  # what errors call it (e.g. the json_schema's name)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming what is wrong: not exactly one kind, or a value of the wrong type."""
        set_ = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(set_) != 1:
            raise ValueError(
                f"guided decoding takes exactly one of {', '.join(KINDS)}; got {', '.join(set_) or 'none'}"
            )
        kind = set_[0]
        value = getattr(self, kind)
        if kind == "json_schema":
            if not isinstance(value, str):
                raise ValueError("guided json_schema must be JSON text (json.dumps the schema)")
            try:
                schema = json.loads(value)
            except ValueError as e:
                raise ValueError(f"guided json_schema is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValueError("guided json_schema must be a JSON object (or true/false)")
        elif kind in ("regex", "grammar") and not (isinstance(value, str) and value):
            raise ValueError(f"guided {kind} must be a non-empty string")
        elif kind == "choice" and not (
            isinstance(value, (tuple, list)) and value and all(isinstance(c, str) and c for c in value)
        ):
            raise ValueError("guided choice must be a non-empty list of non-empty strings")

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> str:
        """Cache key of the compiled grammar: the same spec, the same key, in any process."""
        value = getattr(self, self.kind)
        text = json.dumps(
            [self.kind, list(value) if self.kind == "choice" else value, self.compact_whitespace]
        )
        return hashlib.sha256(text.encode()).hexdigest()
