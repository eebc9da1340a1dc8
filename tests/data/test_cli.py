"""`tuneloop data prepare` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shards import split_text
from typer.testing import CliRunner

from tuneloop.cli import app, main
from tuneloop.errors import ConfigError


def test_prepare_writes_the_dataset_and_prints_a_summary(
    mixed_corpus: Path, tok_dir: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        str(mixed_corpus),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
        f"tokenizer={tok_dir}",
        "chunk.max_tokens=64",
        "pii.mode=drop",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "records read" in result.output and "removed: pii.contains_pii" in result.output
    assert "kept after dedup_near" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["pii"]["mode"] == "drop" and manifest["removed"]["pii.contains_pii"] >= 4
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "manifest.json",
        "train/part-00000.jsonl",
        "train/part-00000.parquet",
        "val/part-00000.jsonl",
        "val/part-00000.parquet",
    ]
    assert f"wrote {out}: train/part-*.jsonl" in " ".join(result.output.split())


def test_config_file_kind_flag_and_json_output(tmp_path: Path, tok_dir: str) -> None:
    (tmp_path / "data.yaml").write_text(f"tokenizer: {tok_dir}\nsplit:\n  val_fraction: 0\n")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello!"}) + "\n")
    args = [
        "data",
        "prepare",
        str(tmp_path / "chat.jsonl"),
        "-o",
        str(tmp_path / "out"),
        "-c",
        str(tmp_path / "data.yaml"),
        "--kind",
        "sft",
        "--json",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["kind"] == "sft" and manifest["counts"]["train_rows"] == 1


def test_a_typo_in_an_override_names_the_key(mixed_corpus: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "prepare", str(mixed_corpus), "--out", str(tmp_path / "o"), "chunk.max_tokenz=5"]
    )
    # the root app turns a TuneloopError into a clean message and exit code 2 (older versions raised it)
    if isinstance(result.exception, ConfigError):
        assert "did you mean 'chunk.max_tokens'" in str(result.exception)
    else:
        assert result.exit_code == 2 and "did you mean 'chunk.max_tokens'" in result.output


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_pii_report_shows_what_would_be_redacted_and_changes_nothing(
    mixed_corpus: Path, tok_dir: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        str(mixed_corpus),
        "-o",
        str(out),
        "-w",
        "1",
        "--no-progress",
        "--pii",
        "report",
    ]
    result = CliRunner().invoke(app, [*args, f"tokenizer={tok_dir}"])
    assert result.exit_code == 0, result.output
    text = split_text(out, "train") + split_text(out, "val")
    assert "<EMAIL>" not in text and "<IP>" not in text  # nothing changed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pii"]["mode"] == "report" and manifest["pii"]["ip"] == 3
    assert "[IP:00.0.0.00]" in manifest["pii_examples"]["ip"][0]["context"]  # the shape, not the address
    assert "PII would be redacted" in result.output and "[EMAIL:" in result.output
    assert "help@example.com" not in result.output  # examples are masked


def test_an_unknown_pii_mode_names_the_choices(mixed_corpus: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "prepare", str(mixed_corpus), "-o", str(tmp_path / "o"), "--pii", "mask"]
    )
    assert result.exit_code != 0 and "--pii 'mask' is not one of redact, drop, report, off" in result.output


def _prepare(*args: str):
    result = CliRunner().invoke(app, ["data", "prepare", *args, "--workers", "1", "--no-progress"])
    return result, " ".join(result.output.split())


def test_an_empty_input_file_is_an_error_naming_it_and_nothing_is_written(
    tmp_path: Path, tok_dir: str
) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "out"
    result, output = _prepare(
        str(tmp_path / "empty.jsonl"), "--out", str(out), "--kind", "sft", f"tokenizer={tok_dir}"
    )
    assert result.exit_code == 2, output
    assert (
        "nothing to prepare" in output and "empty.jsonl: empty file" in output and "Traceback" not in output
    )
    assert not out.exists()  # created by this run, left empty: removed (no empty dataset that looks complete)


def test_inputs_whose_documents_are_all_removed_give_the_reasons(tmp_path: Path, tok_dir: str) -> None:
    rows = [{"text": "hi"}, {"text": "ok"}, {"messages": [{"role": "user", "content": "x"}]}]
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file in the output folder stays
    result, output = _prepare(
        str(tmp_path / "short.jsonl"), "-o", str(out), "--kind", "pretrain", f"tokenizer={tok_dir}"
    )
    assert result.exit_code == 2, output
    assert "every document was removed: 3 records read" in output and "quality.too_short: 2" in output
    assert "short.jsonl:4: invalid JSON" in output and "Traceback" not in output
    assert {p.name for p in out.iterdir()} == {"notes.txt"}  # no manifest, no empty train/val files


def test_an_unwritable_out_is_refused_before_reading(
    mixed_corpus: Path, tmp_path: Path, tok_dir: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    result, output = _prepare(
        str(mixed_corpus), "--out", str(tmp_path / "a-file" / "o"), f"tokenizer={tok_dir}"
    )
    assert result.exit_code == 2 and "--out" in output and "is a file, not a folder" in output, output
    assert "Traceback" not in output
