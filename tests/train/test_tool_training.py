"""Training on tool rows: rendered through the server's renderer (`models.chat`), loss on the assistant
turns only (their text and tool calls; tools, user turns and tool results masked), bad tool rows refused
by train and eval alike with file, line and field, and a short LoRA run on tool rows learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.evaluation.perplexity import IGNORE, sft_token_labels
from tuneloop.models import chat
from tuneloop.models.loading import load_tokenizer
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

from .conftest import base_overrides, write_jsonl

runner = CliRunner()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def tool_row(city: str = "Paris", degrees: int = 18) -> dict:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"{degrees} C, cloudy"},
            {"role": "assistant", "content": f"It is {degrees} C in {city}."},
        ],
    }


def labelled_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


@pytest.fixture(params=["tiny", "default"])
def tokenizer(request, tiny_llama):
    folder = tiny_llama if request.param == "tiny" else request.getfixturevalue("default_model")
    return load_tokenizer(str(folder))


def test_labels_are_exactly_the_assistant_turns_with_their_tool_calls(tokenizer):
    row = tool_row()
    ids, labels = sft_token_labels(tokenizer, row["messages"], tools=row["tools"])
    # what the server shows the model for this call (the Hermes fallback of a template without tools)
    call_text = chat.template_messages(row["messages"], row["tools"], native=False)[0][2]["content"]
    assert call_text.startswith("<tool_call>") and '"city": "Paris"' in call_text
    assert labelled_runs(tokenizer, ids, labels) == [
        call_text + "<|im_end|>",
        "It is 18 C in Paris.<|im_end|>",
    ]
    text = tokenizer.decode(ids)
    assert (
        "<tools>" in text and "get_weather" in text.split("<|im_start|>user")[0]
    )  # the tools are in the prompt
    assert "<tool_response>\n18 C, cloudy\n</tool_response>" in text  # the tool result too, unlabelled


def test_training_renders_a_row_as_the_server_does(tokenizer):
    row = tool_row()
    ids, _ = sft_token_labels(tokenizer, row["messages"], tools=row["tools"])
    served = chat.render_chat(tokenizer, row["messages"], row["tools"], add_generation_prompt=False)
    assert tokenizer.decode(ids) == served


BAD = {
    "unknown_function": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="get_time"),
        "messages[1].tool_calls[0].function.name: 'get_time' is not a function in the row's tools",
    ),
    "arguments_not_a_string": (
        lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments={"city": "Paris"}),
        "messages[1].tool_calls[0].function.arguments: must be a string holding a JSON object",
    ),
    "unmatched_tool_call_id": (
        lambda r: r["messages"][2].update(tool_call_id="call_2"),
        "messages[2].tool_call_id: 'call_2' matches no earlier tool call",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_train_and_eval_refuse_a_bad_tool_row_with_file_line_and_field(case, tiny_llama, tmp_path):
    change, problem = BAD[case]
    bad = tool_row()
    change(bad)
    data = write_jsonl(tmp_path / "train.jsonl", [tool_row(), bad])
    trained = runner.invoke(
        app, ["train", *base_overrides(Path("/nonexistent/model"), data, tmp_path / "run")]
    )
    evaluated = runner.invoke(app, ["eval", str(tiny_llama), "--data", str(data)])
    for result in (trained, evaluated):
        output = " ".join(result.output.split())
        assert result.exit_code == 2 and f"train.jsonl:2: {problem}" in output, output
        assert "Traceback" not in output and "hint:" in output


def test_a_short_lora_run_on_tool_rows_lowers_the_loss(tiny_llama, tmp_path):
    rows = [tool_row(city, 10 + i) for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"])]
    folder = tmp_path / "tools"
    write_jsonl(folder / "train.jsonl", rows)
    settings = {"optim.lr": 1e-2, "data.max_length": 2048, "batch.global_batch": 4, "optim.warmup_ratio": 0.0}
    result = run(
        load_config(
            TrainConfig, None, base_overrides(tiny_llama, folder, tmp_path / "run", max_steps=8, **settings)
        )
    )
    curve = [loss for _, loss in result.metrics["train_loss"]]
    assert result.metrics["data.examples"] == 4  # no row dropped or cut: every call is learned
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.5, curve
