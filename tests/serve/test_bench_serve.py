"""`tuneloop bench serve` against a running gateway (fake engine): a complete report, 429s counted."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient


def test_bench_serve_reports_qps_latency_ttft_and_429s(serve):
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "fake", "model": "unused", "max_concurrency": 1, "max_queue": 0}],
            "auth": {"enabled": False},
        }
    )
    with serve(cfg, {"fake": FakeClient(delay_s=0.002)}) as s:
        args = [
            "bench",
            "serve",
            "--url",
            s.url + "/v1",
            "-m",
            "fake",
            "-c",
            "4",
            "-n",
            "40",
            "--prompt-len",
            "8",
            "--max-tokens",
            "4",
            "--stream",
            "--json",
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["requests"] == 40 and report["qps"] > 0 and report["error_rate"] == 0
    assert 0 < report["rate_429"] < 1  # one slot, no queue, four clients
    assert report["ttft_s"]["p50"] is not None and report["tpot_s"]["p50"] is not None
