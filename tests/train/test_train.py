"""Training on tiny models: each method and objective, resume, OOM backoff, packing, DDP, tracking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.train import objectives
from tuneloop.train.batching import StepPlan, collate
from tuneloop.train.config import OptimSettings, TrainConfig
from tuneloop.train.dataset import IGNORE, Example, pack
from tuneloop.train.recipe import run
from tuneloop.train.schedule import lr_at

from .conftest import base_overrides, write_jsonl

runner = CliRunner()


def train(model: Path, data: Path, out: Path, **extra):
    return run(load_config(TrainConfig, None, base_overrides(model, data, out, **extra)))


def losses(result) -> list[float]:
    return [loss for _, loss in result.metrics["train_loss"]]


# ---------------------------------------------------------------- methods and objectives


def test_sft_lora_learns_and_writes_a_complete_run_folder(tiny_llama, sft_dataset, tmp_path):
    result = train(tiny_llama, sft_dataset, tmp_path / "run", max_steps=12, **{"eval.every": 6})
    curve = losses(result)
    assert len(curve) == 12 and curve[-1] < curve[0]
    for name in ("config.yaml", "metrics.json", "loss.png", "run.json", "model/adapter_config.json",
                 "model/adapter_model.safetensors", "model/tokenizer.json"):  # fmt: skip
        assert (result.run_dir / name).is_file(), name
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    assert [s for s, _ in metrics["val_loss"]] == [6, 12]
    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["dataset"]["fingerprint"].startswith("sha256:") and run_info["base_model"]["path"]


def test_full_fine_tuning_updates_every_weight_and_saves_a_model(tiny_llama, sft_dataset, tmp_path):
    result = train(tiny_llama, sft_dataset, tmp_path / "run", method="full", **{"optim.lr": 1e-3})
    assert (result.model_dir / "config.json").is_file() and (result.model_dir / "model.safetensors").is_file()
    assert result.metrics["trainable_parameters"] == result.metrics["total_parameters"]
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    assert not torch.equal(
        before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    )


def test_continued_pretraining_on_text_rows(tiny_llama, text_dataset, tmp_path):
    result = train(tiny_llama, text_dataset, tmp_path / "run", objective="pretrain", max_steps=6)
    assert losses(result)[-1] < losses(result)[0]


def test_dpo_prefers_chosen_answers_after_training(tiny_llama, pref_dataset, tmp_path):
    result = train(
        tiny_llama, pref_dataset, tmp_path / "run", objective="dpo", max_steps=8, **{"optim.lr": 5e-3}
    )
    curve = losses(result)
    assert curve[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at the start
    assert curve[-1] < curve[0]


def test_dora_option_trains(tiny_llama, sft_dataset, tmp_path):
    result = train(tiny_llama, sft_dataset, tmp_path / "run", **{"lora.dora": "true", "max_steps": 2})
    cfg = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_cpu_is_refused_with_a_reason(tiny_llama, sft_dataset, tmp_path):
    with pytest.raises(TuneloopError, match="qlora needs a CUDA GPU"):
        train(tiny_llama, sft_dataset, tmp_path / "run", method="qlora")


# ---------------------------------------------------------------- resume, OOM, determinism


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_llama, sft_dataset, tmp_path):
    full = train(tiny_llama, sft_dataset, tmp_path / "full", max_steps=30, **{"lora.dropout": 0.1})
    out = tmp_path / "killed"
    args = base_overrides(
        tiny_llama, sft_dataset, out, max_steps=30, **{"lora.dropout": 0.1, "checkpoint.every": 3}
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.train.launch", "-", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "step-00000006" / "state.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    resumed = run(load_config(TrainConfig, None, args))  # resume=auto is the default
    assert len(losses(resumed)) == 30
    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5, abs=1e-6)


def test_cuda_oom_halves_micro_batch_and_keeps_the_effective_batch(
    tiny_llama, sft_dataset, tmp_path, monkeypatch
):
    reference = train(tiny_llama, sft_dataset, tmp_path / "ref", **{"batch.micro_batch": 2})
    real = objectives.token_loss_sum

    def oom_when_large(model, batch, **kw):
        if batch["input_ids"].shape[0] > 2:  # simulated: no GPU here, so CUDA OOM cannot really happen
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, **kw)

    monkeypatch.setattr("tuneloop.train.trainer.token_loss_sum", oom_when_large)
    result = train(tiny_llama, sft_dataset, tmp_path / "oom", **{"batch.micro_batch": 8})
    assert result.metrics["oom_backoffs"] == [{"step": 0, "micro_batch": 4}, {"step": 0, "micro_batch": 2}]
    assert losses(result) == pytest.approx(losses(reference), rel=1e-5)


def test_oom_at_micro_batch_one_is_a_clear_error(tiny_llama, sft_dataset, tmp_path, monkeypatch):
    def always_oom(model, batch, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr("tuneloop.train.trainer.token_loss_sum", always_oom)
    with pytest.raises(TuneloopError, match="even with micro-batch 1"):
        train(tiny_llama, sft_dataset, tmp_path / "run", **{"batch.micro_batch": 1})


def test_micro_batch_size_does_not_change_the_result(tiny_llama, sft_dataset, tmp_path):
    a = train(tiny_llama, sft_dataset, tmp_path / "a", **{"batch.micro_batch": 8})
    b = train(tiny_llama, sft_dataset, tmp_path / "b", **{"batch.micro_batch": 1})
    assert losses(a) == pytest.approx(losses(b), rel=1e-5)


def test_step_plan_is_deterministic_and_covers_each_epoch():
    plan = StepPlan.build(n_examples=10, global_batch=4, seed=3, epochs=2, max_steps=None)
    assert plan.total_steps == 6 and plan.steps_per_epoch == 3
    epoch0 = plan.batch(0) + plan.batch(1) + plan.batch(2)
    assert sorted(epoch0) == list(range(10)) and plan.batch(4) == plan.batch(4)
    assert plan.batch(3) + plan.batch(4) + plan.batch(5) != epoch0  # reshuffled per epoch


# ---------------------------------------------------------------- packing, schedule, early stop, plateau


def test_packed_loss_equals_unpacked_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    a = Example([5, 9, 13, 40, 41], [IGNORE, IGNORE, 13, 40, 41])
    b = Example([7, 8, 99], [IGNORE, 8, 99])
    with torch.no_grad():
        sep = [objectives.token_loss_sum(model, collate([e], 0)) for e in (a, b)]
        packed = pack([a, b], max_length=16)
        assert len(packed) == 1 and packed[0].segments == [5, 3]
        together = objectives.token_loss_sum(model, collate(packed, 0))
    assert together[1] == sep[0][1] + sep[1][1]
    assert float(together[0]) == pytest.approx(float(sep[0][0] + sep[1][0]), rel=1e-5)


def test_packing_run_trains(tiny_llama, sft_dataset, tmp_path):
    result = train(
        tiny_llama, sft_dataset, tmp_path / "run", **{"data.packing": "true", "data.max_length": 128}
    )
    assert result.metrics["data.packed_sequences"] < result.metrics["data.examples"]


def test_warmup_then_cosine_schedule():
    optim = OptimSettings(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    values = [lr_at(s, optim, total_steps=12) for s in range(12)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert (
        values[2] == pytest.approx(1.0)
        and values[-1] > 0.1
        and values == sorted(values[:2]) + sorted(values[2:], reverse=True)
    )
    assert lr_at(5, OptimSettings(lr=1.0, schedule="linear", warmup_steps=0), 10) == pytest.approx(0.5)


def test_early_stopping_and_plateau_lr_cut(tiny_llama, sft_dataset, tmp_path, monkeypatch):
    rising = iter([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    monkeypatch.setattr("tuneloop.train.trainer.Trainer.validation_loss", lambda self: next(rising))
    result = train(tiny_llama, sft_dataset, tmp_path / "run", max_steps=20,
                   **{"eval.every": 1, "early_stopping.patience": 4, "plateau.patience": 2})  # fmt: skip
    assert result.metrics["stopped_early"] is True and result.metrics["steps"] == 5
    assert result.metrics["lr_cuts"] == [3, 5] and result.metrics["restored_best"] is True


# ---------------------------------------------------------------- bad input


def test_wrong_dataset_kind_names_file_and_line(tiny_llama, text_dataset, tmp_path):
    with pytest.raises(TuneloopError) as e:
        train(tiny_llama, text_dataset, tmp_path / "run", objective="sft")
    assert "train.jsonl:1" in e.value.message and "pretraining (text)" in e.value.message


def test_invalid_json_line_is_named(tiny_llama, tmp_path):
    data = tmp_path / "bad"
    write_jsonl(
        data / "train.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    with open(data / "train.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(TuneloopError, match=r"train.jsonl:2: invalid JSON"):
        train(tiny_llama, data, tmp_path / "run")


def test_overlong_rows_are_truncated_or_dropped_and_counted(tiny_llama, sft_dataset, tmp_path):
    # rows here are 60-79 tokens, their answers start at token 37-54
    kept = train(tiny_llama, sft_dataset, tmp_path / "t", **{"data.max_length": 66, "max_steps": 1})
    assert kept.metrics["data.truncated"] > 0 and kept.metrics["data.examples"] == 24
    dropped = train(
        tiny_llama,
        sft_dataset,
        tmp_path / "d",
        **{"data.max_length": 66, "data.overlong": "drop", "max_steps": 1},
    )
    assert dropped.metrics["data.dropped_overlong"] == kept.metrics["data.truncated"]
    assert dropped.metrics["data.examples"] == 24 - dropped.metrics["data.dropped_overlong"]
    with pytest.raises(TuneloopError, match="no training examples"):
        train(tiny_llama, sft_dataset, tmp_path / "n", **{"data.max_length": 30, "max_steps": 1})


def test_cli_config_typo_and_missing_data_exit_2(tiny_llama, tmp_path):
    result = runner.invoke(app, ["train", f"model={tiny_llama}", "data.path=/nope", "lora.rnak=4"])
    assert result.exit_code == 2 and "did you mean 'lora.rank'" in result.output
    result = runner.invoke(app, ["train", f"model={tiny_llama}", "data.path=/nope"])
    assert result.exit_code == 2 and "data.path '/nope' does not exist" in result.output


def test_global_batch_must_be_a_multiple_of_micro_batch():
    with pytest.raises(TuneloopError, match=r"multiple of batch\.micro_batch"):
        load_config(TrainConfig, None, ["data.path=x", "batch.global_batch=10", "batch.micro_batch=4"])


# ---------------------------------------------------------------- tracking, CLI end to end


def test_cli_run_is_tracked_in_mlflow_and_tensorboard(
    tiny_llama, sft_dataset, tmp_path, tuneloop_home, monkeypatch
):
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    args = base_overrides(tiny_llama, sft_dataset, out, **{"tracking.mlflow": "true", "tracking.tensorboard": "true",
                          "eval.final": "true", "eval.max_samples": 4, "eval.max_new_tokens": 4, "eval.every": 2})  # fmt: skip
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    # MLflow exports the run's URI to the environment; the run must not leave it behind for later registries
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", f"sqlite:///{tuneloop_home / 'mlflow.db'}"
    )  # undone after the test
    mlflow.set_tracking_uri(f"sqlite:///{tuneloop_home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tuneloop"], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["lora.rank"] == "16" and r.data.params["run.train_examples"] == "24"
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 4
    assert len(client.get_metric_history(r.info.run_id, "val/loss")) == 2
    assert "eval/perplexity" in r.data.metrics
    # the steady speed (without the 2 warm-up steps) next to the overall one, in MLflow and the summary
    assert r.data.metrics["run/tokens_per_s"] > 0 and r.data.metrics["run/tokens_per_s_overall"] > 0
    printed = " ".join(result.output.split())
    assert "tokens/s steady" in printed and "first 2 warm-up step(s)" in printed, printed
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"loss.png", "config.yaml", "metrics.json", "eval.json", "adapter"} <= artifacts
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def failure(result, capfd) -> str:
    """The workers' own error lines first: torchrun's children write to the inherited stderr, not to the runner."""
    err = [
        line for line in capfd.readouterr().err.splitlines() if line.strip() and "Failed to load" not in line
    ]
    return "workers' stderr (last lines):\n" + "\n".join(err[-25:]) + "\n\ncommand output:\n" + result.output


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_llama, sft_dataset, tmp_path, capfd):
    single = train(tiny_llama, sft_dataset, tmp_path / "one", max_steps=3)
    args = base_overrides(tiny_llama, sft_dataset, tmp_path / "two", max_steps=3)
    result = runner.invoke(app, ["train", *args, "--nproc", "2"])
    assert result.exit_code == 0, failure(result, capfd)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2
    assert [loss for _, loss in two["train_loss"]] == pytest.approx(losses(single), rel=1e-4)


# ---------------------------------------------------------------- precision and the fit check


def test_bf16_autocast_on_cpu_trains(tiny_llama, sft_dataset, tmp_path):
    result = train(tiny_llama, sft_dataset, tmp_path / "run", precision="bf16", max_steps=6)
    assert result.metrics["precision"] == "bf16" and losses(result)[-1] < losses(result)[0]


def test_model_that_cannot_fit_is_refused_before_loading(llama3_8b_shape, monkeypatch):
    """No GPU here: the detected GPU memory is faked; the estimate itself is the real `plan`."""
    from tuneloop.resources import plan as plan_mod
    from tuneloop.train.model_setup import Precision, check_fit

    folder = llama3_8b_shape
    monkeypatch.setattr(plan_mod, "detected_memory", lambda gpus: (24 * 2**30, "Fake 24 GiB GPU"))
    cfg = load_config(
        TrainConfig, None, [f"model={folder}", "data.path=x", "method=full", "data.max_length=2048"]
    )
    with pytest.raises(TuneloopError) as e:
        check_fit(cfg, str(folder), "cuda", Precision("bf16", torch.bfloat16), world=1)
    assert "GiB per GPU but 24.0 GiB is available" in e.value.message and e.value.hint
    cfg = load_config(TrainConfig, None, [f"model={folder}", "data.path=x", "method=qlora", "data.max_length=512",
                                          "batch.micro_batch=1", "batch.global_batch=8", "gradient_checkpointing=true"])  # fmt: skip
    assert check_fit(cfg, str(folder), "cuda", Precision("bf16", torch.bfloat16), world=1).fits is True


@pytest.mark.slow
def test_two_process_fsdp_full_fine_tuning_matches_one_process(tiny_llama, sft_dataset, tmp_path, capfd):
    extra = {"method": "full", "max_steps": 3, "optim.lr": 1e-4}
    single = train(tiny_llama, sft_dataset, tmp_path / "one", **extra)
    args = base_overrides(tiny_llama, sft_dataset, tmp_path / "two", strategy="fsdp", **extra)
    result = runner.invoke(app, ["train", *args, "--nproc", "2"])
    assert result.exit_code == 0, failure(result, capfd)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2
    assert [loss for _, loss in two["train_loss"]] == pytest.approx(losses(single), rel=1e-4)
    assert [g for _, g in two["grad_norm"]] == pytest.approx(
        [g for _, g in single.metrics["grad_norm"]], rel=1e-3
    )
    from safetensors.torch import load_file

    a = load_file(str(single.model_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_parallel_tokenization_gives_the_same_examples(tiny_llama):
    from tuneloop.models.loading import load_tokenizer
    from tuneloop.train.dataset import tokenize, tokenize_parallel

    from .conftest import sft_rows

    rows = sft_rows(40)
    one = tokenize(rows, load_tokenizer(tiny_llama), "sft", 70, "truncate")
    two = tokenize_parallel(rows, str(tiny_llama), "sft", 70, "truncate", workers=2)
    assert [e.input_ids for e in one.examples] == [e.input_ids for e in two.examples]
    assert [e.labels for e in one.examples] == [e.labels for e in two.examples]
    assert one.counts == two.counts and one.counts["truncated"] > 0


def test_profile_writes_a_trace_and_top_operators(tiny_llama, sft_dataset, tmp_path):
    result = train(tiny_llama, sft_dataset, tmp_path / "run", profile="true", max_steps=6)
    profile = result.run_dir / "profile"
    assert "Self CPU" in (profile / "top_operators.txt").read_text()
    assert list(profile.glob("*.pt.trace.json*"))
