"""`tuneloop chat`: a conversation fed through stdin, on the tiny random model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app


@pytest.fixture
def turns(monkeypatch):
    """Every conversation `stream_chat` is asked to continue; replies are canned, streamed in pieces."""
    import tuneloop.models.loading as loading

    seen: list[list[dict]] = []

    def fake(model, tokenizer, messages, **kwargs):
        seen.append([dict(m) for m in messages])
        yield from (f"reply {len(seen)}", " done")

    monkeypatch.setattr(loading, "stream_chat", fake)
    return seen


def test_multi_turn_history_reset_and_exit(tiny_llama, turns):
    stdin = "hello\nand then?\n/reset\nagain\n/exit\nnever read\n"
    result = CliRunner().invoke(app, ["chat", str(tiny_llama), "--system", "Be brief."], input=stdin)
    assert result.exit_code == 0, result.output
    assert "bot> reply 1 done" in result.output and "(conversation cleared)" in result.output
    assert len(turns) == 3
    assert [m["role"] for m in turns[1]] == ["system", "user", "assistant", "user"]
    assert turns[1][2]["content"] == "reply 1 done"  # the streamed reply joined into the history
    assert [m["content"] for m in turns[2]] == ["Be brief.", "again"]  # /reset keeps the system prompt


def test_end_of_input_leaves_cleanly(tiny_llama, turns):
    result = CliRunner().invoke(app, ["chat", str(tiny_llama)], input="hi\n")
    assert result.exit_code == 0, result.output
    assert len(turns) == 1 and "bye" in result.output


def test_ctrl_c_leaves_cleanly(tiny_llama, turns, monkeypatch):
    from tuneloop.cli.chat import Session

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "loop", interrupted)
    result = CliRunner().invoke(app, ["chat", str(tiny_llama)], input="")
    assert result.exit_code == 0, result.output
    assert "bye" in result.output and "Traceback" not in result.output


def test_old_turns_are_dropped_when_the_context_is_full(tiny_llama, turns):
    # the tiny model has 512 positions; each message is ~120 tokens and 250 are kept for the reply
    long = "word " * 40
    stdin = "".join(f"{long} {i}\n" for i in range(4)) + ("word " * 200) + "\n"
    result = CliRunner().invoke(app, ["chat", str(tiny_llama), "--max-new-tokens", "250"], input=stdin)
    assert result.exit_code == 0, result.output
    assert len(turns) == 4  # the 200-word message alone does not fit: refused, not sent
    assert "does not fit the model's context" in result.output
    assert 1 <= len(turns[-1]) < 7 and turns[-1][-1]["content"].endswith(" 3")


def test_real_streaming_on_the_tiny_model(tiny_llama):
    result = CliRunner().invoke(
        app,
        ["chat", str(tiny_llama), "--max-new-tokens", "5", "--temperature", "0.8", "--seed", "1"],
        input="hello\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert "bot> " in result.output


def test_unknown_model_is_a_clear_error():
    result = CliRunner().invoke(app, ["chat", "./no-such-model"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
