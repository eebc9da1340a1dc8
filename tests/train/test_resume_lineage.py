"""Resume never changes a run behind your back: a checkpoint made under other training settings is
refused by `resume=auto`, continued only deliberately, and the lineage keeps each segment's settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneloop.config import load_config
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

from .conftest import base_overrides, sft_rows, write_jsonl


def config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    return load_config(TrainConfig, None, base_overrides(model, data, out, **extra))


@pytest.fixture(scope="module")
def _stopped_template(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stopped")
    data = root / "sft"
    write_jsonl(data / "train.jsonl", sft_rows(24))
    write_jsonl(data / "val.jsonl", sft_rows(8))
    out = root / "run"
    run(config(tiny_llama, data, out, max_steps=6, **{"checkpoint.every": 2}))
    for name in ("metrics.json", "run.json", "model"):  # what only a finished run writes
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return data, out


@pytest.fixture
def stopped_run(_stopped_template, tmp_path) -> Path:
    """A run folder with checkpoints at steps 2 and 4 of 6 (as a run killed at step 5 leaves it)."""
    out = tmp_path / "run"
    shutil.copytree(_stopped_template[1], out)
    return out


@pytest.fixture
def sft_dataset(_stopped_template) -> Path:
    return _stopped_template[0]  # the stopped run's own data (data.path shapes training)


def test_resume_auto_under_changed_settings_is_refused_naming_each_key(tiny_llama, sft_dataset, stopped_run):
    cfg = config(tiny_llama, sft_dataset, stopped_run, max_steps=6, **{"optim.lr": 2e-3, "seed": 7})
    with pytest.raises(TuneloopError) as e:
        run(cfg)
    message = str(e.value)
    assert "optim.lr: 0.001 -> 0.002" in message and "seed: 42 -> 7" in message
    assert "step-00000004" in message and "(step 4)" in message
    assert "resume=never" in e.value.hint and "resume.allow_changes=[optim.lr,seed]" in e.value.hint
    assert "max_steps" not in message  # unchanged keys are not listed
    assert not (stopped_run / "metrics.json").exists()


def test_settings_that_do_not_shape_training_may_change_on_resume(tiny_llama, sft_dataset, stopped_run):
    # micro-batch (accumulation), logging, checkpointing and eval frequency change speed, not the weights
    cfg = config(
        tiny_llama, sft_dataset, stopped_run, max_steps=6,
        **{"checkpoint.every": 3, "batch.micro_batch": 2, "log_every": 2, "eval.every": 5},
    )  # fmt: skip
    result = run(cfg)
    assert result.metrics["steps"] == 6
    segs = json.loads((stopped_run / "run.json").read_text())["segments"]
    assert len(segs) == 1 and segs[0]["from_step"] == 0 and segs[0]["to_step"] == 6 and segs[0]["starts"] == 2


def test_explicit_checkpoint_with_allow_changes_starts_a_new_segment(tiny_llama, sft_dataset, stopped_run):
    step4 = stopped_run / "checkpoints" / "step-00000004"
    cfg = config(
        tiny_llama, sft_dataset, stopped_run, max_steps=8,
        **{"optim.lr": 2e-3, "resume.checkpoint": str(step4), "resume.allow_changes": "[optim.lr,max_steps]"},
    )  # fmt: skip
    result = run(cfg)
    info = json.loads((stopped_run / "run.json").read_text())
    first, second = info["segments"]
    assert (first["from_step"], first["to_step"], second["from_step"], second["to_step"]) == (0, 4, 4, 8)
    assert first["config"]["optim.lr"] == 0.001 and second["config"]["optim.lr"] == 0.002
    assert second["changed"] == {"optim.lr": {"old": 0.001, "new": 0.002}, "max_steps": {"old": 6, "new": 8}}
    assert first["config_hash"] != second["config_hash"]
    # config.yaml is the last segment's, and says that it is not the whole run's
    text = (stopped_run / "config.yaml").read_text()
    assert text.startswith("# trained in 2 segments") and "optim.lr: 0.001 -> 0.002" in text
    assert yaml.safe_load(text)["optim"]["lr"] == 0.002
    # time and throughput over both segments: every step's seconds, not only this start's
    m = result.metrics
    every_step = sum(s for _, s in m["step_seconds"])
    assert len(m["step_seconds"]) == 8
    assert m["train_seconds"] == pytest.approx(every_step, abs=1e-2)
    assert m["train_seconds"] == pytest.approx(first["train_seconds"] + second["train_seconds"], abs=1e-2)
    assert m["tokens_per_s_overall"] == pytest.approx(
        (first["tokens"] + second["tokens"]) / m["train_seconds"], rel=1e-6
    )
    # the steady speed leaves out each start's first two steps (compilation, allocator warm-up)
    warm = [s for step, s in m["step_seconds"] if step in (1, 2, 5, 6)]
    assert m["warmup_steps"] == 4 and m["warmup_seconds"] == pytest.approx(sum(warm), abs=1e-2)
    total = first["tokens"] + second["tokens"]
    assert 0 < m["warmup_tokens"] < total
    assert m["tokens_per_s"] == pytest.approx(
        (total - m["warmup_tokens"]) / (m["train_seconds"] - m["warmup_seconds"]), rel=1e-3
    )


def test_allow_changes_must_name_every_changed_key(tiny_llama, sft_dataset, stopped_run):
    step4 = stopped_run / "checkpoints" / "step-00000004"
    cfg = config(
        tiny_llama, sft_dataset, stopped_run,
        **{"optim.lr": 2e-3, "max_steps": 8, "resume.checkpoint": str(step4), "resume.allow_changes": "[optim.lr]"},
    )  # fmt: skip
    with pytest.raises(TuneloopError, match=r"max_steps: 6 -> 8") as e:
        run(cfg)
    assert "resume.allow_changes=[max_steps,optim.lr]" in e.value.hint


def test_allow_changes_bad_input_is_named(tiny_llama, sft_dataset, stopped_run):
    step4 = stopped_run / "checkpoints" / "step-00000004"
    with pytest.raises(
        TuneloopError, match=r"'optim.lrr' is not a key that shapes training \(did you mean 'optim.lr'"
    ):
        run(config(tiny_llama, sft_dataset, stopped_run, **{"resume.checkpoint": str(step4), "resume.allow_changes": "[optim.lrr]"}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"resume.allow_changes needs an explicit checkpoint folder"):
        config(tiny_llama, sft_dataset, stopped_run, **{"resume.allow_changes": "[optim.lr]"})
    with pytest.raises(TuneloopError, match=r"resume.checkpoint='.*nowhere' is not a complete checkpoint"):
        run(config(tiny_llama, sft_dataset, stopped_run, resume=str(stopped_run / "nowhere")))


def test_resume_shorthand_and_never_still_work(tiny_llama, sft_dataset, stopped_run):
    assert config(tiny_llama, sft_dataset, stopped_run, resume="never").resume.checkpoint == "never"
    result = run(
        config(tiny_llama, sft_dataset, stopped_run, resume="never", max_steps=3, **{"optim.lr": 2e-3})
    )
    segs = json.loads((stopped_run / "run.json").read_text())["segments"]
    assert result.metrics["steps"] == 3 and len(segs) == 1 and segs[0]["config"]["optim.lr"] == 0.002


def test_killed_run_is_marked_failed_in_mlflow_at_the_next_start(
    tiny_llama, sft_dataset, tmp_path, tuneloop_home, monkeypatch
):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "killed"
    tracked = {"tracking.mlflow": "true", "tracking.system_metrics": "false"}
    args = base_overrides(tiny_llama, sft_dataset, out, max_steps=5000, **tracked)
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.train.launch", "-", *args],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300  # a loaded CI machine takes minutes to import torch and MLflow
    while time.time() < deadline and not _running(tuneloop_home):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _running(tuneloop_home), "the killed run should have been RUNNING in MLflow"
    # the next start (another run; the killed one saved no checkpoint to resume) finds it
    run(config(tiny_llama, sft_dataset, tmp_path / "next", **tracked))
    client = mlflow.MlflowClient(f"sqlite:///{tuneloop_home / 'mlflow.db'}")
    runs = {r.data.tags["tuneloop.run_dir"]: r for r in client.search_runs(_experiments(client))}
    killed, finished = runs[str(out)], runs[str(tmp_path / "next")]
    assert killed.info.status == "FAILED" and "marked failed" in killed.data.tags["tuneloop.failure"]
    assert finished.info.status == "FINISHED"
    assert json.loads(finished.data.tags["tuneloop.segments"])[0]["to_step"] == 4


def test_segments_reach_mlflow_as_params_and_tags(
    tiny_llama, sft_dataset, stopped_run, tuneloop_home, monkeypatch
):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    step4 = stopped_run / "checkpoints" / "step-00000004"
    run(config(tiny_llama, sft_dataset, stopped_run, max_steps=6, **{
        "tracking.mlflow": "true", "tracking.system_metrics": "false", "optim.lr": 2e-3,
        "resume.checkpoint": str(step4), "resume.allow_changes": "[optim.lr]"}))  # fmt: skip
    client = mlflow.MlflowClient(f"sqlite:///{tuneloop_home / 'mlflow.db'}")
    (r,) = client.search_runs(_experiments(client))
    assert r.data.params["segment.1.optim.lr"] == "0.002" and r.data.params["segment.1.from_step"] == "4"
    assert r.data.tags["tuneloop.segment_count"] == "2"
    assert [s["from_step"] for s in json.loads(r.data.tags["tuneloop.segments"])] == [0, 4]


def _experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _running(home: Path) -> bool:
    import mlflow

    if not (home / "mlflow.db").exists():
        return False
    try:
        client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        # RUNNING and tagged: the run exists before its tags are written (killed in between, it could
        # not be told apart from the next run's)
        return any(
            r.info.status == "RUNNING" and "tuneloop.run_dir" in r.data.tags
            for r in client.search_runs(_experiments(client))
        )
    except Exception:  # the database is still being created by the other process
        return False
