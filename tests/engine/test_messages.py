"""The engine process's messages (engine/messages.py): typed, tagged by Kind, read by name not position."""

from __future__ import annotations

import msgspec
import pytest

from tuneloop.engine import EngineStats, RequestOutput, SamplingParams
from tuneloop.engine.messages import (
    Abort,
    Add,
    Added,
    Codec,
    ErrorInfo,
    FromEngine,
    Kind,
    LoraNames,
    Step,
    Stop,
    ToEngine,
)


def test_a_batch_round_trips_as_typed_messages_tagged_by_their_kind():
    server, engine = Codec(FromEngine), Codec(ToEngine)
    params = SamplingParams(max_tokens=3, temperature=0, seed=2**64 - 1, stop_token_ids=[7])
    sent = [Add("r1", [1, 2], params, 2, "a"), Abort("r1"), LoraNames(7), Stop()]
    wire = server.join([server.encode(m) for m in sent])  # each encoded where it was made, sent as one
    assert engine.decode(wire) == sent
    assert [m[0] for m in msgspec.msgpack.decode(wire)] == [Kind.ADD, Kind.ABORT, Kind.LORA_NAMES, Kind.STOP]


def test_step_outputs_carry_new_tokens_and_stats_survive_the_trip():
    codec = Codec(FromEngine)
    stats = EngineStats(1, 0, 0.5, 10, 0.0, 0, 3, 5, 2, 1.5, max_model_len=256)
    out = RequestOutput("r1", [42], False, None, [{42: -0.5, 7: -1.25}], None, 5, 4)
    sent = [Added("r1"), Added("r2", ErrorInfo("ValueError", "bad")), Step([out], stats)]
    assert codec.decode(codec.encode_batch(sent)) == sent


def test_a_field_of_the_wrong_type_fails_the_decode_by_name():
    wire = msgspec.msgpack.encode([[int(Kind.ABORT), 5]])  # a request id that is not a string
    with pytest.raises(msgspec.ValidationError, match="Expected `str`, got `int`"):
        Codec(ToEngine).decode(wire)
    with pytest.raises(msgspec.ValidationError, match="Invalid value 99"):  # an unknown kind
        Codec(ToEngine).decode(msgspec.msgpack.encode([[99, "r1"]]))
