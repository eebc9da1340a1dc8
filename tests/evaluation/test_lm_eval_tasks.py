"""tuneloop's shipped lm-evaluation-harness tasks: well-formed data, scoring, an offline end-to-end run
on a tiny model (library and CLI), per-example results for the gate, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.lm_eval_harness import (
    TASKS_DIR,
    paired_results,
    run_tasks,
    shipped_tasks,
    task_manager,
)

SHIPPED = ["tuneloop_mc_en", "tuneloop_mc_zh", "tuneloop_qa_en", "tuneloop_qa_zh"]
runner = CliRunner()


def _utils():
    spec = importlib.util.spec_from_file_location("tuneloop_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(name: str) -> list[dict]:
    task = task_manager([name]).load([name])["tasks"][name]
    return list(task.test_docs())


def test_every_shipped_task_and_group_is_listed():
    names = shipped_tasks()
    assert set(SHIPPED) <= set(names)
    assert {"tuneloop_general", "tuneloop_mc", "tuneloop_qa"} <= set(names)


@pytest.mark.parametrize("name", ["tuneloop_mc_en", "tuneloop_mc_zh"])
def test_multiple_choice_data_is_well_formed(name):
    docs = _docs(name)
    assert len(docs) >= 50
    assert len({d["id"] for d in docs}) == len(docs) and len({d["question"] for d in docs}) == len(docs)
    for d in docs:
        assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4, d
        assert 0 <= d["answer"] < 4, d
    # the right answer is spread over the positions, so a model always picking one letter gets ~25 %
    positions = [d["answer"] for d in docs]
    assert all(positions.count(p) >= len(docs) // 5 for p in range(4))


@pytest.mark.parametrize("name", ["tuneloop_qa_en", "tuneloop_qa_zh"])
def test_short_answer_data_is_well_formed_and_the_examples_are_not_questions(name):
    docs = _docs(name)
    assert len(docs) >= 50
    assert len({d["question"] for d in docs}) == len(docs)
    assert all(d["answers"] and all(a.strip() for a in d["answers"]) for d in docs)
    task = task_manager([name]).load([name])["tasks"][name]
    examples = {s["question"] for s in task.fewshot_docs()}
    assert len(examples) == 3 and not examples & {d["question"] for d in docs}


@pytest.mark.parametrize(
    ("prediction", "answers", "exact", "contains"),
    [
        ("Paris.", ["Paris"], 1, 1),
        (" the Pacific Ocean", ["Pacific Ocean"], 1, 1),  # articles and spaces do not count
        ("The capital is Paris, of course", ["Paris"], 0, 1),
        ("16", ["6", "six"], 0, 0),  # "6" is not in "16": whole words in English
        ("Six legs", ["6", "six"], 0, 1),
        ("答案是北京。", ["北京"], 0, 1),  # Chinese: no spaces between words, so any substring
        ("北京", ["北京"], 1, 1),
        ("１２", ["12"], 1, 1),  # full-width digits (NFKC)
        ("", ["Paris"], 0, 0),
    ],
)
def test_short_answers_are_scored_after_normalization(prediction, answers, exact, contains):
    got = _utils().process_short_answer({"answers": answers}, [prediction])
    assert got == {"exact_match": exact, "contains": contains}


def test_a_bad_data_line_names_its_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answers": ["x"]}\n{"question": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        _utils().load(str(bad))


def test_shipped_tasks_run_end_to_end_on_a_tiny_model(tiny_llama):
    report = run_tasks(str(tiny_llama), ["tuneloop_general"], limit=3, device="cpu")
    assert sorted(report.tasks) == SHIPPED
    assert report.groups == {"tuneloop_general": SHIPPED}
    assert {t.primary for t in report.tasks.values()} == {"acc", "contains"}
    for name, task in report.tasks.items():
        assert task.n == 3 and [d.doc_id for d in task.docs] == [0, 1, 2]
        assert [d.id for d in task.docs] == [
            f"{name.split('_', 1)[1].replace('_', '-')}-{i:03d}" for i in (1, 2, 3)
        ]
        for metric, score in task.metrics.items():
            assert 0 <= score.low <= score.value <= score.high <= 1, (name, metric, score)
            assert score.method == "wilson"
            assert score.value == pytest.approx(sum(task.values(metric)) / 3)
        if name.startswith("tuneloop_qa"):
            assert all(isinstance(d.prediction, str) for d in task.docs)
    # what the gate gets: both models' values on the same examples, in the same order
    paired = paired_results(report, report)
    assert sorted(paired) == SHIPPED
    for p in paired.values():
        assert p.n == 3 and p.base == p.candidate and p.mean_difference == 0
    assert report.to_dict(docs=False)["tasks"]["tuneloop_mc_en"].get("docs") is None


def test_the_engine_and_the_harness_hf_model_give_the_same_scores(tiny_llama):
    engine = run_tasks(str(tiny_llama), SHIPPED, limit=4, device="cpu")
    hf = run_tasks(str(tiny_llama), SHIPPED, limit=4, device="cpu", backend="hf")
    for name in SHIPPED:
        assert [d.scores for d in engine.tasks[name].docs] == [d.scores for d in hf.tasks[name].docs], name
        preds = [(d.prediction or "").rstrip("\ufffd") for d in engine.tasks[name].docs]
        assert preds == [(d.prediction or "").rstrip("\ufffd") for d in hf.tasks[name].docs], name


def test_an_unknown_task_is_a_clear_error_listing_the_shipped_ones(tiny_llama):
    with pytest.raises(TuneloopError) as e:
        task_manager(["tuneloop_mc_xx"])
    assert "unknown task: tuneloop_mc_xx" in str(e.value)
    assert all(name in str(e.value) for name in SHIPPED)
    result = runner.invoke(app, ["eval", str(tiny_llama), "--tasks", "tuneloop_mc_en,tuneloop_mc_xx"])
    assert result.exit_code != 0
    assert "unknown task: tuneloop_mc_xx" in result.output and "Traceback" not in result.output


def test_cli_tasks_prints_scores_and_writes_reports(tiny_llama, tmp_path):
    out = tmp_path / "out"
    args = ["eval", str(tiny_llama), "--tasks", "tuneloop_mc_zh, tuneloop_qa_en", "--max-samples", "2"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tuneloop_mc_zh" in result.output and "acc *" in result.output and "95% interval" in result.output
    data = json.loads((out / "tasks.json").read_text())
    assert sorted(data["model"]["tasks"]) == ["tuneloop_mc_zh", "tuneloop_qa_en"]
    assert len(data["model"]["tasks"]["tuneloop_qa_en"]["docs"]) == 2
    assert "| tuneloop_mc_zh | acc * | 2 |" in (out / "tasks.md").read_text()

    args = ["eval", str(tiny_llama), "--tasks", "tuneloop_mc_zh", "--max-samples", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json", "--baseline", str(tiny_llama)])
    assert result.exit_code == 0, result.output
    paired = json.loads(result.stdout)["paired"]["tuneloop_mc_zh"]  # progress bars go to stderr
    assert paired["n"] == 2 and paired["baseline"] == paired["candidate"] and paired["mean_difference"] == 0
    assert paired["interval"]["low"] <= 0 <= paired["interval"]["high"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "tuneloop_mc_en", "--data", "x.jsonl"], "--data and --tasks are two evaluations"),
        ([], "nothing to evaluate on"),
        (["--data", "x.jsonl", "--api-base", "http://127.0.0.1:1/v1"], "work with --tasks only"),
    ],
)
def test_cli_refuses_what_it_cannot_do(tiny_llama, extra, message):
    result = runner.invoke(app, ["eval", str(tiny_llama), *extra])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
