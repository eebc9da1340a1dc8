"""`tuneloop bench serve` against a running gateway (fake engine): a complete report, 429s counted, ITL tails."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from tuneloop.bench.serve import prompt_text, run
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


class _StallingClient(FakeClient):
    """Ten words 5 ms apart, with one 300 ms stall in the middle of every answer."""

    async def generate(self, request):
        async for i, delta in _numbered(super().generate(request)):
            await asyncio.sleep(0.3 if i == 5 else 0.005)
            yield delta


async def _numbered(stream):
    i = 0
    async for item in stream:
        yield i, item
        i += 1


def test_bench_serve_itl_percentiles_show_a_stall_that_tpot_averages_away(serve):
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "fake", "model": "unused"}], "auth": {"enabled": False}}
    )
    with serve(cfg, {"fake": _StallingClient()}) as s:
        report = run(
            s.url + "/v1", "fake", requests=4, concurrency=4, prompt_len=10, max_tokens=10, stream=True
        )
    assert report["error_rate"] == 0
    itl, tpot = report["itl_s"], report["tpot_s"]
    assert itl["p99"] > 0.25  # one gap in nine is the stall: the tail sees it
    assert itl["p50"] < 0.15  # the typical gap is the short one
    assert tpot["p99"] < 0.2  # per-request averages: (8 short + 1 stall) / 9


def test_bench_serve_prompts_of_another_tag_share_no_prefix():
    # a second run against the same server must not find the first run's prompts in the prefix cache
    assert prompt_text(3, 1) == "r1w0 r1w1 r1w2"  # untagged: as before
    assert prompt_text(3, 1, "b").split()[0] != prompt_text(3, 1, "c").split()[0]
