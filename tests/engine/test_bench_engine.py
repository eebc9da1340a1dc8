"""`tuneloop bench engine` runs both sides on one device and reports every row with its ratio."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneloop.cli import app


def test_bench_engine_reports_every_row(tiny_llama, tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "engine",
        "--model",
        str(tiny_llama),
        "--new-tokens",
        "4",
        "--concurrency",
        "1,4",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    names = [r["name"] for r in report["results"]]
    assert names == ["transformers generate, one at a time", "transformers generate, static batches of 8",
                     "tuneloop engine, 1 concurrent", "tuneloop engine, 4 concurrent"]  # fmt: skip
    assert all(r["output_tokens"] == r["requests"] * 4 and r["tokens_per_s"] > 0 for r in report["results"])
    assert report["results"][0]["ratio_vs_one_at_a_time"] == 1.0


def test_bench_engine_rejects_a_bad_concurrency_list(tiny_llama):
    result = CliRunner().invoke(app, ["bench", "engine", "--model", str(tiny_llama), "--concurrency", "1,x"])
    assert result.exit_code == 2
    assert "not a list of integers" in result.output
