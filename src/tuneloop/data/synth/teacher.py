"""The interfaces the synthesis needs, implemented above the stages (flows/synth.py):

- `Teacher`: a batch of chat prompts in, one reply text (or an error) per prompt out; our engine
  in-process (one continuous batch) or an OpenAI-compatible upstream (concurrent, retried, paced);
- `Verifier` (optional): a second opinion on grounding after the string heuristics, e.g. the LLM
  judge of `tuneloop eval` asked whether the answer agrees with the chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class TeacherRequest:
    messages: Messages
    schema: str | None  # the reply's JSON schema (JSON text) for structured output; None: free text
    max_tokens: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class TeacherReply:
    text: str
    error: str | None = None  # no reply for this prompt, and why (after the transport's own retries)
    fatal: bool = False  # the error is the teacher's as a whole (wrong key, no such model): stop
    tokens: int = 0  # completion tokens


class Teacher(Protocol):
    identity: str

    def ask(self, requests: list[TeacherRequest]) -> list[TeacherReply]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Claim:
    question: str
    answer: str
    chunk: str


class Verifier(Protocol):
    identity: str

    def verify(self, claims: list[Claim]) -> list[str | None]:
        """Per claim: None to keep it, or why it is not supported (a counted reason)."""
        ...
