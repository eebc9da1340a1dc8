"""`tuneloop train` with bad input: the data is checked before any model is resolved, with eval's
own row check (same rows refused, same words); a failed run leaves no empty or unmarked run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run
from tuneloop.train.trainer import Trainer

from .conftest import base_overrides, sft_rows, write_jsonl

runner = CliRunner()
GOOD = sft_rows(1)[0]
BAD_ROWS = {
    "missing_role": ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}, "message 0 has no 'role'"),
    "integer_content": (
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "yo"}]},
        "message 0 has int content; content must be a string",
    ),
    "no_assistant_turn": ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    "messages_not_a_list": ({"messages": "hi"}, "'messages' must be a non-empty list"),
    "not_an_object": ([1, 2], "expected a JSON object, got list"),
}  # fmt: skip
NO_MODEL = "/nonexistent/model-folder"  # resolving it fails: any error about it means the data came second


def _train_cli(*args: str):
    result = runner.invoke(app, ["train", *args])
    return result, " ".join(result.output.split())


def _refused(result, output: str) -> None:
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "hint:" in output, output


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_messages_name_file_and_line_before_any_model_is_resolved(case, tmp_path):
    row, problem = BAD_ROWS[case]
    data = write_jsonl(tmp_path / "data" / "train.jsonl", [GOOD, GOOD, row])
    out = tmp_path / "run"
    started = time.perf_counter()
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), data.parent, out))
    _refused(result, output)
    assert f"train.jsonl:3: {problem}" in output and "does not exist" not in output
    assert time.perf_counter() - started < 10  # no model was resolved or loaded
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_train_and_eval_refuse_the_same_rows_with_the_same_words(case, tiny_llama, tmp_path):
    """One row check shared by both: the same problem text, file and line."""
    row, problem = BAD_ROWS[case]
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, row])
    _, trained = _train_cli(*base_overrides(Path(NO_MODEL), data, tmp_path / "run"))
    result = runner.invoke(app, ["eval", str(tiny_llama), "--data", str(data)])
    evaluated = " ".join(result.output.split())
    assert result.exit_code == 2 and f"train.jsonl:2: {problem}" in evaluated, evaluated
    assert trained.split("train.jsonl:2:")[1] == evaluated.split("train.jsonl:2:")[1]


def test_a_bad_validation_row_is_found_before_the_model_too(tmp_path):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", [GOOD] * 4)
    write_jsonl(folder / "val.jsonl", [GOOD, {"messages": [{"role": "bot", "content": "x"}]}])
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), folder, tmp_path / "run"))
    _refused(result, output)
    assert "val.jsonl:2: message 0 has role 'bot'" in output


def test_preference_rows_are_checked_with_file_and_line(tmp_path):
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}
    data = write_jsonl(tmp_path / "pref.jsonl", [pair, {"prompt": "q", "chosen": "a"}, pair])
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), data, tmp_path / "run", objective="dpo"))
    _refused(result, output)
    assert "pref.jsonl:2: preference row without 'rejected'" in output


def test_a_file_in_another_encoding_names_the_line(tmp_path):
    chinese = {
        "messages": [{"role": "user", "content": "保修期多久？"}, {"role": "assistant", "content": "两年。"}]
    }
    data = tmp_path / "gbk.jsonl"
    data.write_bytes((json.dumps(GOOD) + "\n" + json.dumps(chinese, ensure_ascii=False) + "\n").encode("gbk"))
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), data, tmp_path / "run"))
    _refused(result, output)
    assert "gbk.jsonl:2: not UTF-8 text" in output


def test_multi_process_training_checks_the_data_before_starting_workers(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, BAD_ROWS["integer_content"][0]])
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), data, tmp_path / "run"), "--nproc", "2")
    _refused(result, output)
    assert "train.jsonl:2: message 0 has int content" in output and "torch.distributed.run" not in output


def test_an_unwritable_output_dir_is_refused_before_the_model(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD])
    (tmp_path / "a-file").write_text("x")
    result, output = _train_cli(*base_overrides(Path(NO_MODEL), data, tmp_path / "a-file" / "run"))
    _refused(result, output)
    assert "output_dir" in output and "is a file, not a folder" in output


# ---------------------------------------------------------------- what a failed run leaves behind


def test_a_run_that_fails_before_saving_anything_removes_its_folder(tiny_llama, sft_dataset, tmp_path):
    out = tmp_path / "run"
    args = base_overrides(tiny_llama, sft_dataset, out, **{"data.max_length": 30, "data.overlong": "drop"})
    result, output = _train_cli(*args)
    _refused(result, output)
    assert "no training examples left" in output
    assert not out.exists()


def test_a_failure_leaves_an_earlier_runs_folder_as_it_was(tiny_llama, sft_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"status": "completed"}')
    args = base_overrides(tiny_llama, sft_dataset, out, **{"data.max_length": 30, "data.overlong": "drop"})
    assert _train_cli(*args)[0].exit_code == 2
    assert (out / "run.json").read_text() == '{"status": "completed"}'


def test_a_failed_run_is_marked_and_the_next_run_resumes_it(tiny_llama, sft_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = load_config(
        TrainConfig, None, base_overrides(tiny_llama, sft_dataset, out, **{"checkpoint.every": 1})
    )
    real_step = Trainer._optimizer_step

    def failing_step(self, step):
        if step == 2:
            raise RuntimeError("disk on fire")
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_optimizer_step", failing_step)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(cfg)
    failed = json.loads((out / "run.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: disk on fire"
    assert failed["checkpoint"].endswith("step-00000002")
    result = runner.invoke(app, ["registry", "register", str(out), "--name", "tiny"])
    assert (
        result.exit_code == 2
        and "the last run in this folder failed: RuntimeError: disk on fire" in result.output
    )

    steps: list[int] = []
    monkeypatch.setattr(
        Trainer, "_optimizer_step", lambda self, step: steps.append(step) or real_step(self, step)
    )
    resumed = run(cfg)  # the same name: resume=auto continues from step 2, and the folder says completed
    assert resumed.metrics["steps"] == 4 and steps == [2, 3]
    done = json.loads((out / "run.json").read_text())
    assert done["status"] == "completed" and "error" not in done


def test_a_tuneloop_error_is_raised_from_run_not_hidden(tmp_path):
    """The library entry point raises the same error the CLI prints (no folder either)."""
    data = write_jsonl(tmp_path / "train.jsonl", [BAD_ROWS["no_assistant_turn"][0]])
    with pytest.raises(TuneloopError, match=r"train.jsonl:1: no assistant turn"):
        run(load_config(TrainConfig, None, base_overrides(Path(NO_MODEL), data, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_an_empty_val_path_means_no_validation_and_a_missing_one_is_an_error(tmp_path):
    """The loop passes an empty file for an objective it holds nothing out for: train must not fall back
    to the folder's val split then, and must not refuse it as 'no rows'."""
    from tuneloop.train.dataset import dataset_files

    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", [GOOD] * 2)
    write_jsonl(folder / "val.jsonl", [GOOD])
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    assert dataset_files(str(folder), str(empty))[1] is None
    assert dataset_files(str(folder / "train.jsonl"), str(empty))[1] is None
    assert dataset_files(str(folder), None)[1] == folder / "val.jsonl"
    with pytest.raises(TuneloopError, match="does not exist"):
        dataset_files(str(folder), str(tmp_path / "missing.jsonl"))
