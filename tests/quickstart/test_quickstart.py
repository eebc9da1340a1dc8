"""`tuneloop quickstart` end to end on the tiny random model: every stage, reuse on a rerun, bad
states recovered or reported, and the served path answering through the `openai` client."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quickstart.conftest import state
from tuneloop.cli import app

STAGE_KEYS = {"data", "eval_base", "train", "eval_tuned", "register"}


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def workdir(args: list[str]) -> Path:
    return Path(args[args.index("--workdir") + 1])


def test_quickstart_no_serve_runs_every_stage_and_registers_production(qs_args):
    result = invoke(qs_args)
    assert result.exit_code == 0, result.output
    for heading in ("[1/7] Base model", "[2/7] Example corpus", "[3/7] Evaluate the base model",
                    "[4/7] LoRA fine-tune", "[5/7] Evaluate the fine-tuned", "[6/7] Register",
                    "[7/7] Ask the sample question (no server)"):  # fmt: skip
        assert heading in result.output
    assert "contains the key fact" in result.output  # the before/after table
    assert "exact_dup" in result.output or "removed" in result.output  # the data summary
    assert "acme-support@production -> acme-support/1" in result.output
    wd = workdir(qs_args)
    assert set(state(wd)["stages"]) >= STAGE_KEYS
    assert (wd / "eval" / "base" / "eval.json").is_file() and (wd / "eval" / "tuned" / "eval.md").is_file()
    assert (wd / "serve.yaml").is_file()
    from tuneloop.registry import Registry

    info = Registry().get("acme-support@production")
    assert info.version == 1 and info.is_adapter


def test_rerun_reuses_every_stage_without_retraining(qs_args, monkeypatch):
    assert invoke(qs_args).exit_code == 0
    wd = workdir(qs_args)
    weights = next((wd / "run" / "model").glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns

    import tuneloop.flows.quickstart.stages as stages

    def forbidden(*_a, **_k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(stages, "run", forbidden)  # the training recipe, as the quickstart calls it
    monkeypatch.setattr(stages, "evaluate", forbidden)  # the evaluation harness, likewise
    result = invoke(qs_args)
    assert result.exit_code == 0, result.output
    assert "already registered acme-support/1" in result.output
    assert weights.stat().st_mtime_ns == mtime
    summary = result.output[result.output.index("quickstart") :]
    assert summary.count("reused") >= 5
    from tuneloop.registry import Registry

    assert len(Registry().versions("acme-support")) == 1  # no second version


def test_force_redoes_the_stages(qs_args):
    assert invoke(qs_args).exit_code == 0
    result = invoke([*qs_args, "--force"])
    assert result.exit_code == 0, result.output
    assert "already registered" not in result.output
    assert "registered acme-support/2" in result.output


def test_half_finished_run_folder_is_trained_again(qs_args, monkeypatch):
    assert invoke(qs_args).exit_code == 0
    wd = workdir(qs_args)
    for f in (wd / "run" / "model").glob("*.safetensors"):
        f.unlink()  # as if training had been stopped before it saved
    (wd / "run" / "checkpoints").mkdir(exist_ok=True)
    import tuneloop.flows.quickstart.stages as stages

    calls = []
    real = stages.run  # the training recipe, as the quickstart calls it
    monkeypatch.setattr(stages, "run", lambda cfg: calls.append(cfg) or real(cfg))
    result = invoke(qs_args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert next((wd / "run" / "model").glob("*.safetensors")).is_file()


def test_corrupt_state_file_is_reported_and_everything_checked_again(qs_args):
    assert invoke(qs_args).exit_code == 0
    wd = workdir(qs_args)
    (wd / "state.json").write_text("{not json")
    result = invoke(qs_args)
    assert result.exit_code == 0, result.output
    assert "is unreadable" in result.output and "Traceback" not in result.output
    assert set(state(wd)["stages"]) >= STAGE_KEYS


def test_deleted_registry_version_is_registered_again(qs_args):
    assert invoke(qs_args).exit_code == 0
    from tuneloop.registry import Registry

    reg = Registry()
    reg.unalias("acme-support", "production")
    reg.delete("acme-support", 1)
    result = invoke(qs_args)
    assert result.exit_code == 0, result.output
    assert "registered acme-support/2" in result.output
    assert Registry().get("acme-support@production").version == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no-heldout", "qa/heldout.jsonl"),
        ("forced-override", "override 'output_dir' is set by the quickstart"),
        ("bad-override", "unknown key 'lora.rnak'"),
        ("workdir-file", "is a file"),
        ("bad-name", "not a valid registered model name"),
    ],
)
def test_user_mistakes_are_short_errors(qs_args, tiny_corpus, tmp_path, change, message):
    args = list(qs_args)
    if change == "no-heldout":
        corpus = tmp_path / "corpus"
        (corpus / "qa").mkdir(parents=True)
        (corpus / "docs").mkdir()
        (corpus / "qa" / "train.jsonl").write_text((tiny_corpus / "qa" / "train.jsonl").read_text())
        args[args.index("--corpus") + 1] = str(corpus)
    elif change == "forced-override":
        args.append("output_dir=/tmp/x")
    elif change == "bad-override":
        args.append("lora.rnak=4")
    elif change == "bad-name":
        args += ["--name", "acme support!"]
    else:
        (tmp_path / "file").write_text("")
        args[args.index("--workdir") + 1] = str(tmp_path / "file")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_served_quickstart_answers_through_the_openai_client(tiny_llama, tiny_corpus, tiny_config, tmp_path):
    from openai import OpenAI

    from tuneloop.cli import quickstart as qs_cli
    from tuneloop.flows.quickstart.settings import Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(workdir=tmp_path / "qs", model=str(tiny_llama), corpus=tiny_corpus,
                        train_config=tiny_config, eval_max_new_tokens=4)  # fmt: skip
    seen = {}

    def until(running, key):
        client = OpenAI(base_url=running.url, api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": "How many devices?"}], max_tokens=5
        )
        seen["reply"] = reply
        with pytest.raises(Exception, match="401"):  # keys are required
            OpenAI(base_url=running.url, api_key="tl-wrong", max_retries=0).models.list()

    out = qs_cli.run(settings, serve=True, port=port, until=until)
    reply = seen["reply"]
    assert reply.model == "acme-support" and reply.usage.completion_tokens >= 1
    assert out["register"].version == 1
    serve_yaml = (tmp_path / "qs" / "serve.yaml").read_text()
    assert "lora: acme-support@production" in serve_yaml
    with socket.socket() as s:  # the server is gone afterwards
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_busy_port_is_a_clear_error(tiny_llama, tiny_corpus, tiny_config, tmp_path, qs_args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = [a for a in qs_args if a != "--no-serve"] + ["--serve", "--port", str(port)]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output


def test_training_progress_reaches_the_last_step(tiny_llama, tiny_corpus, tiny_config, tmp_path):
    from tuneloop.flows.quickstart import stages as qs
    from tuneloop.flows.quickstart.settings import Settings, Workdir

    settings = Settings(workdir=tmp_path / "qs", model=str(tiny_llama), corpus=tiny_corpus,
                        train_config=tiny_config)  # fmt: skip
    wd = Workdir(settings)
    steps = []
    trained = qs.finetune(
        settings, wd, qs.pull_model(settings), progress=lambda d, t, loss: steps.append((d, t))
    )
    assert steps and steps[-1] == (3, 3)
    assert json.loads((trained.run_dir / "metrics.json").read_text())["steps"] == 3


def test_default_settings_find_the_bundled_corpus_and_config():
    from tuneloop.config import load_config
    from tuneloop.flows.quickstart.settings import Settings
    from tuneloop.train.config import TrainConfig

    s = Settings()
    s.check()
    assert s.corpus.name == "acme-kb" and s.train_config.name == "quickstart-sft-lora.yaml"
    cfg = load_config(TrainConfig, s.train_config)
    assert cfg.method == "lora" and cfg.model == "smollm2-135m-instruct"
    assert s.workdir.name == "quickstart" and s.workdir.parent.name.startswith("home")


def test_merged_eval_report_equals_one_pass(tiny_llama, tiny_corpus, tmp_path):
    """Chunked evaluation (for the progress bar) gives the same metrics as the harness in one pass."""
    from tuneloop.evaluation.harness import evaluate
    from tuneloop.flows.quickstart.settings import Settings
    from tuneloop.flows.quickstart.stages import evaluate_in_chunks
    from tuneloop.loop.answers import load_for_answers

    s = Settings(workdir=tmp_path, model=str(tiny_llama), corpus=tiny_corpus, train_config=tmp_path / "x",
                 eval_max_new_tokens=3, eval_batch_size=3)  # fmt: skip
    merged, _ = evaluate_in_chunks(s, tiny_llama, None)
    model, tokenizer, _ = load_for_answers(tiny_llama)
    whole = evaluate(
        str(tiny_llama), s.heldout, max_new_tokens=3, batch_size=3, model=model, tokenizer=tokenizer
    )
    assert merged.n == whole.n == 4
    for k, v in whole.metrics.items():
        assert merged.metrics[k] == pytest.approx(v, rel=1e-4), k
