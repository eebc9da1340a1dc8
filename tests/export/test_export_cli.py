"""`tuneloop export` through the real CLI app, and registry linkage of an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

FAST = ["--latency-tokens", "4", "--repeats", "1", "--max-samples", "3"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def test_cli_prune_json_report(tiny_llama: Path, tmp_path: Path) -> None:
    result = _invoke(str(tiny_llama), "--prune", "0.25", "--out", str(tmp_path / "p"), "--json", *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["after"]["sparsity"] == pytest.approx(0.25, abs=0.01)
    for key in ("size_bytes", "load_s", "ttft_s", "per_token_s", "perplexity"):
        assert data["before"][key] > 0 and data["after"][key] > 0, key
    assert set(data["ratios"]) >= {"size_bytes", "per_token_s", "perplexity"}
    assert json.loads((tmp_path / "p" / "export_report.json").read_text())["output"] == data["output"]


def test_cli_table_with_eval_data_has_task_score(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    rows = [
        {"answer": "Paris", "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]},
        {"answer": "4", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _invoke(
        str(tiny_llama), "--prune", "0.2", "--out", str(tmp_path / "p"), "--eval-data", str(data), *FAST
    )
    assert result.exit_code == 0, result.output
    assert "task score" in result.stdout and "perplexity" in result.stdout and "exported" in result.stdout
    report = json.loads((tmp_path / "p" / "export_report.json").read_text())
    assert report["before"]["task"]["token_f1"] >= 0 and "contains_answer" in report["after"]["task"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model", "--prune", "0.3"], "unknown model 'no-such-model'"),
        (["TINY", "--prune-pattern", "2:4", "--device", "cpu"], "NVIDIA GPU"),
        (["TINY", "--prune", "1.2"], "between 0 and 1"),
        (["TINY"], "nothing to export"),
    ],
)
def test_cli_bad_input_is_a_short_error(
    tiny_llama: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(tiny_llama) if a == "TINY" else a for a in args]
    result = _invoke(*args, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert message in result.output and "hint:" in result.output
    assert "Traceback" not in result.output


def test_cli_quality_gate_refusal_exits_2_with_numbers(trained_tiny: Path, tmp_path: Path) -> None:
    result = _invoke(
        str(trained_tiny), "--prune", "0.9", "--max-quality-drop", "0.05", "--out", str(tmp_path / "p"), *FAST
    )
    assert result.exit_code == 2
    assert "export refused" in result.output and "perplexity" in result.output and "→" in result.output


def test_export_of_a_registry_version_is_registered_with_its_parent(tiny_llama: Path, tmp_path: Path) -> None:
    registry = pytest.importorskip("tuneloop.registry")
    reg = registry.Registry()
    source = reg.register_folder(tiny_llama, "tiny")
    ref = f"tiny/{source.version}"
    result = _invoke(
        ref, "--prune", "0.3", "--name", "tiny-pruned", "--out", str(tmp_path / "p"), "--json", *FAST
    )
    assert result.exit_code == 0, result.output
    registered = json.loads(result.stdout)["registered"]
    assert registered["parent"] == ref
    info = reg.get(registered["ref"])
    assert info.tags["tuneloop.parent"] == ref
    assert info.tags["tuneloop.export.steps"] == "prune 0.3"
    assert float(info.tags["tuneloop.export.size_ratio"]) == pytest.approx(1.0, abs=0.02)
    assert (info.path / "prune.json").is_file() and (info.path / "export_report.json").is_file()
