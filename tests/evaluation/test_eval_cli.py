"""`tuneloop eval` through the real CLI: reports written, and every bad input exits 2 naming file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()
ROW = {
    "messages": [
        {"role": "user", "content": "Where is the capital?"},
        {"role": "assistant", "content": "北京"},
    ],
    "answer": "北京",
}


def _run(*args: str):
    result = runner.invoke(app, ["eval", *args])
    return result, result.output  # stdout and stderr together (click >= 8.2)


def test_eval_with_baseline_writes_json_and_markdown(tiny_llama, tiny_model_factory, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n" + json.dumps(ROW, ensure_ascii=False) + "\n")
    baseline = tiny_model_factory("mistral")
    result, output = _run(
        str(tiny_llama),
        "--data",
        str(data),
        "--baseline",
        str(baseline),
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    )
    assert result.exit_code == 0, output
    assert "perplexity" in output and "delta" in output and "contains_answer" in output
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["model"]["n"] == 2 and saved["baseline"]["model"] == str(baseline)
    assert {r["name"] for r in saved["comparison"]["metrics"]} >= {"perplexity", "rouge_l", "token_f1"}
    assert "| rouge_l |" in (tmp_path / "out" / "eval.md").read_text()


def test_eval_json_flag_prints_parseable_json(tiny_llama, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    result = runner.invoke(
        app, ["eval", str(tiny_llama), "--data", str(data), "--json", "--max-new-tokens", "2"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["model"]["metrics"]["perplexity"] > 1


BAD_FILES = {
    "invalid_json": (json.dumps(ROW) + "\n{not json}\n", r"bad.jsonl:2: invalid JSON"),
    "no_messages_or_text": (json.dumps(ROW) + '\n{"prompt": "hi"}\n', r"bad.jsonl:2: row has neither"),
    "no_assistant_turn": (
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
        r"bad.jsonl:1: no assistant turn",
    ),
    "bad_role": (
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n",
        r"bad.jsonl:1: message 0",
    ),
    "mixed_kinds": (json.dumps(ROW) + "\n" + json.dumps({"text": "x"}) + "\n", r"bad.jsonl:2: a text row"),
    "reply_before_question": (
        json.dumps({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]})
        + "\n",
        r"bad.jsonl:1: no assistant reply after the last user turn",
    ),
    "empty": ("\n\n", r"bad.jsonl' is empty"),
    "missing_role": (
        json.dumps({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n",
        r"bad.jsonl:1: message 0 has no 'role'",
    ),
    "integer_content": (
        json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "y"}]})
        + "\n",
        r"bad.jsonl:1: message 0 has int content",
    ),
    "text_not_a_string": (
        json.dumps({"text": ["a", "b"]}) + "\n",
        r"bad.jsonl:1: 'text' must be a string, not list",
    ),
    "preference_row": (
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n",
        r"bad.jsonl:1: a preference (prompt/chosen/rejected) row where SFT (messages) or pretraining (text) rows",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_exits_2_naming_file_and_line(case, tiny_llama, tmp_path):
    content, expected = BAD_FILES[case]
    (tmp_path / "bad.jsonl").write_text(content)
    result, output = _run(str(tiny_llama), "--data", str(tmp_path / "bad.jsonl"))
    assert result.exit_code == 2, output
    assert expected in " ".join(output.split()), output
    assert "Traceback" not in output and "hint:" in output


def test_missing_data_file_exits_2(tiny_llama, tmp_path):
    result, output = _run(str(tiny_llama), "--data", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and "nope.jsonl" in output and "does not exist" in output


def test_missing_model_exits_2(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    result, output = _run(str(tmp_path / "no-model"), "--data", str(data))
    assert result.exit_code == 2 and "does not exist" in output


def test_unknown_device_exits_2_before_loading(tiny_llama, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    result, output = _run(str(tiny_llama), "--data", str(data), "--device", "gpu0")
    assert result.exit_code == 2 and "unknown device 'gpu0'" in output


def _no_evaluation(monkeypatch):
    """Any call of the evaluation fails the test: the checks under test must come first."""

    def evaluate(*_a, **_k):
        raise AssertionError("the evaluation ran before the mistake was reported")

    monkeypatch.setattr("tuneloop.cli.eval.evaluate", evaluate)


def test_unwritable_out_is_refused_before_the_evaluation(tiny_llama, tmp_path, monkeypatch):
    _no_evaluation(monkeypatch)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    (tmp_path / "a-file").write_text("x")
    for out, why in (
        (tmp_path / "a-file" / "reports", "is a file, not a folder"),
        ("/proc/reports", "not writable"),
    ):
        result, output = _run(str(tiny_llama), "--data", str(data), "--out", str(out))
        assert result.exit_code == 2, output
        assert f"--out '{out}'" in output and why in output and "Traceback" not in output
    assert not Path("/proc/reports").exists() and not (tmp_path / "a-file").is_dir()


def test_unknown_baseline_is_refused_before_the_evaluation(tiny_llama, tmp_path, monkeypatch):
    _no_evaluation(monkeypatch)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    result, output = _run(str(tiny_llama), "--data", str(data), "--baseline", str(tmp_path / "no-such-model"))
    assert result.exit_code == 2 and "no-such-model' does not exist" in output, output


def test_out_is_created_only_when_the_evaluation_succeeds(tiny_llama, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    out = tmp_path / "deep" / "reports"
    result, output = _run(str(tiny_llama), "--data", str(tmp_path / "bad.jsonl"), "--out", str(out))
    assert result.exit_code == 2 and not (tmp_path / "deep").exists(), output


def test_non_utf8_data_names_the_line(tiny_llama, tmp_path):
    data = tmp_path / "gbk.jsonl"
    data.write_bytes((json.dumps(ROW) + "\n" + json.dumps(ROW, ensure_ascii=False) + "\n").encode("gbk"))
    result, output = _run(str(tiny_llama), "--data", str(data))
    assert result.exit_code == 2 and "gbk.jsonl:2: not UTF-8 text" in output, output
