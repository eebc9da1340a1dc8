"""The messages between the server and the engine process (process.py): typed, tagged by `Kind`.

Each pipe message is a msgpack array of these Structs; a Struct is an array too, its first element
its `Kind` (msgspec's tagged union), so the receiver decodes a batch into typed objects in one call
and dispatches on their class. No pickle: a message is only data, and a field of the wrong type
fails the decode by name instead of being read by position.

  server -> engine  Add | Abort | LoadLora | UnloadLora | LoraNames | Stop
  engine -> server  Ready | Fatal            (once, at start)
                    Added | Step | Failed | Reply | Stats
"""

from __future__ import annotations

import enum

import msgspec

from tuneloop.engine.engine import EngineStats
from tuneloop.engine.outputs import RequestOutput
from tuneloop.engine.sampling import SamplingParams


class Kind(enum.IntEnum):
    """A message's tag: the first element of its msgpack array."""

    ADD = 1
    ABORT = 2
    LOAD_LORA = 3
    UNLOAD_LORA = 4
    LORA_NAMES = 5
    STOP = 6
    READY = 10
    FATAL = 11
    ADDED = 12
    STEP = 13
    FAILED = 14
    REPLY = 15
    STATS = 16


class _Message(msgspec.Struct, array_like=True, tag_field="kind"):
    pass


class ErrorInfo(msgspec.Struct, array_like=True):
    """An exception raised on the other side, rebuilt by `process._rebuild`."""

    kind: str  # "TuneloopError" (a user mistake), "ValueError" (a refused request), or any other name
    message: str
    hint: str | None = None


# ---------------------------------------------------------------- server -> engine


class Add(_Message, tag=Kind.ADD.value):
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0
    lora: str | None = None


class Abort(_Message, tag=Kind.ABORT.value):
    request_id: str


class LoadLora(_Message, tag=Kind.LOAD_LORA.value):
    call_id: int
    name: str
    folder: str


class UnloadLora(_Message, tag=Kind.UNLOAD_LORA.value):
    call_id: int
    name: str


class LoraNames(_Message, tag=Kind.LORA_NAMES.value):
    call_id: int


class Stop(_Message, tag=Kind.STOP.value):
    pass


ToEngine = Add | Abort | LoadLora | UnloadLora | LoraNames | Stop
Call = LoadLora | UnloadLora | LoraNames


# ---------------------------------------------------------------- engine -> server


class Ready(_Message, tag=Kind.READY.value):
    stats: EngineStats


class Fatal(_Message, tag=Kind.FATAL.value):
    error: ErrorInfo


class Added(_Message, tag=Kind.ADDED.value):
    request_id: str
    error: ErrorInfo | None = None  # refused: submit() raises it


class Step(_Message, tag=Kind.STEP.value):
    outputs: list[RequestOutput]  # new tokens only: the server side keeps nothing per request
    stats: EngineStats | None = None  # at most every STATS_EVERY_S


class Failed(_Message, tag=Kind.FAILED.value):
    """A step failed as a whole (not one request's fault): these requests end with the message."""

    message: str
    request_ids: list[str]


class Reply(_Message, tag=Kind.REPLY.value):
    call_id: int
    result: list[str] | None = None
    error: ErrorInfo | None = None


class Stats(_Message, tag=Kind.STATS.value):
    """Sent when the engine goes idle, so `stats()` is fresh between bursts."""

    stats: EngineStats


FromEngine = Ready | Fatal | Added | Step | Failed | Reply | Stats


class Codec:
    """Encode a batch of messages of one direction; decode a batch of the other."""

    def __init__(self, receives: object):
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[receives])  # type: ignore[valid-type]

    def encode(self, message: msgspec.Struct) -> bytes:
        return self._encoder.encode(message)

    def join(self, encoded: list[bytes]) -> bytes:
        """Messages encoded one by one (each where it was made), sent as one batch."""
        return self._encoder.encode([msgspec.Raw(m) for m in encoded])

    def encode_batch(self, messages: list[msgspec.Struct]) -> bytes:
        return self._encoder.encode(messages)

    def decode(self, data: bytes) -> list:
        return self._decoder.decode(data)
