"""General tasks through an OpenAI-compatible server: the harness's `local-completions` against a real
in-process `tuneloop serve` (uvicorn on 127.0.0.1), checked against the engine in this process."""

from __future__ import annotations

import json

import pytest
from lm_eval.api.instance import Instance
from typer.testing import CliRunner

from serve.conftest import run_server  # tests/serve/conftest.py: the real server
from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.lm_eval_engine import EngineLM
from tuneloop.evaluation.lm_eval_harness import make_lm
from tuneloop.serve import ServeConfig

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("问题：中国的首都是哪座城市？\n答案：", "北京"),
    ("The quick brown fox", " jumps over the lazy dog"),
]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama), "kv_cache_gib": 0.02}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path_factory.mktemp('db')}/serve.db"},
            "log": {"path": str(tmp_path_factory.mktemp("log") / "requests.jsonl")},
        }
    )
    with run_server(cfg) as s:
        yield s


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_the_server_gives_the_engines_loglikelihoods_and_generations(server, tiny_llama):
    api = make_lm("tiny", "api", base_url=server.url + "/v1", tokenizer=str(tiny_llama))
    local = EngineLM(str(tiny_llama), device="cpu", kv_cache_gib=0.05)
    got = api.loglikelihood(_instances("loglikelihood", PAIRS))
    want = local.loglikelihood(_instances("loglikelihood", PAIRS))
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-3)  # the server rounds nothing, but sums in another order
        assert g_greedy == w_greedy
    requests = [
        ("Question: name a colour.\nAnswer:", {"until": ["\n"], "max_gen_toks": 16}),
        ("你好", {"until": [], "max_gen_toks": 8}),
    ]
    got_text = api.generate_until(_instances("generate_until", requests))
    want_text = local.generate_until(_instances("generate_until", requests))
    # the server holds back a trailing half UTF-8 character; the local decode shows it as U+FFFD
    assert got_text == [t.rstrip("\ufffd") for t in want_text]


def test_cli_evaluates_tasks_through_the_server(server, tiny_llama):
    args = ["eval", "tiny", "--tasks", "tuneloop_mc_en", "--max-samples", "2", "--json"]
    result = CliRunner().invoke(
        app, [*args, "--api-base", server.url + "/v1", "--tokenizer", str(tiny_llama)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["model"]
    assert report["backend"] == "api" and report["model"] == "tiny"
    task = report["tasks"]["tuneloop_mc_en"]
    assert task["n"] == 2 and [d["id"] for d in task["docs"]] == ["mc-en-001", "mc-en-002"]


def test_the_api_backend_needs_a_url_and_a_local_tokenizer(server):
    with pytest.raises(TuneloopError, match="needs the server's URL"):
        make_lm("tiny", "api")
    with pytest.raises(TuneloopError, match="needs a local tokenizer") as e:
        make_lm("tiny", "api", base_url=server.url + "/v1")  # "tiny" is a served name, not a local model
    assert "--tokenizer" in str(e.value)
