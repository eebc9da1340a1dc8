"""`tuneloop eval MODEL --data FILE --baseline OTHER --judge REF`: the judge's section in eval.json,
eval.md and on the console; every flag mistake exits 2 before anything is evaluated."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()
ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Which port does SSH use?"},
            {"role": "assistant", "content": "Port 2222."},
        ],
        "answer": "2222",
        "id": "ssh",
    },
    {
        "messages": [
            {"role": "user", "content": "Where is the capital?"},
            {"role": "assistant", "content": "北京"},
        ],
        "answer": "北京",
        "id": "capital",
    },
]


def _data(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    return path


def _run(*args: str):
    result = runner.invoke(app, ["eval", *args])
    return result, result.output


@pytest.fixture(scope="module")
def judge_model(tiny_model_factory):
    return tiny_model_factory("llama", max_position_embeddings=2048)  # room for the judge's prompt


def test_eval_with_a_judge_writes_its_section_next_to_the_metrics(
    tiny_llama, tiny_model_factory, judge_model, tmp_path, tuneloop_home
):
    baseline = tiny_model_factory("mistral")
    out = tmp_path / "out"
    result, output = _run(str(tiny_llama), "--data", str(_data(tmp_path)), "--baseline", str(baseline),
                          "--judge", str(judge_model), "--out", str(out), "--max-new-tokens", "4")  # fmt: skip
    assert result.exit_code == 0, output
    assert "pairwise judge" in output and "win rate" in output and "position bias" in output
    saved = json.loads((out / "eval.json").read_text())
    judge = saved["judge"]
    assert judge["n"] == 2 and judge["wins"] + judge["ties"] + judge["losses"] == 2
    assert 0 <= judge["ci_low"] <= judge["win_rate"] <= judge["ci_high"] <= 1 and judge["confidence"] == 0.95
    assert judge["judge"].startswith("engine:") and judge["usage"]["prompts"] >= 4
    assert [a["metric"] for a in judge["agreement"]] == ["contains_answer", "token_f1"]
    assert {"decided", "first_rate", "p_value", "biased", "invalid"} <= set(judge["position"])
    first = judge["judgments"][0]
    assert first["id"] == "ssh" and first["question"] == "Which port does SSH use?"
    assert [o["shown_first"] for o in first["orders"]] == ["a", "b"]
    assert saved["comparison"]["metrics"]  # the reference-based metrics are still there
    md = (out / "eval.md").read_text()
    assert "## Pairwise judge" in md and "| win rate (ties half), 95 % CI |" in md and "| token_f1 |" in md
    log = tuneloop_home / "judge" / "log.jsonl"  # every prompt and reply, for audit
    assert len(log.read_text().splitlines()) == judge["usage"]["prompts"]
    assert (tuneloop_home / "judge" / "cache.sqlite").is_file()


def test_a_judge_yaml_and_a_rubric_file(tiny_llama, judge_model, tmp_path):
    config = tmp_path / "judge.yaml"
    config.write_text(
        f"model: {judge_model}\nreasons: false\nmax_tokens: 4\nlog: {tmp_path / 'log.jsonl'}\n"
        f"cache: {tmp_path / 'cache.sqlite'}\n"
    )
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Prefer the answer that names the port number.\n")
    result, output = _run(str(tiny_llama), "--data", str(_data(tmp_path)), "--baseline", str(tiny_llama),
                          "--judge", str(config), "--judge-rubric", str(rubric), "--json", "--max-new-tokens", "2")  # fmt: skip
    assert result.exit_code == 0, output
    judge = json.loads(result.stdout)["judge"]
    assert judge["rubric"] == "Prefer the answer that names the port number."
    prompts = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("names the port number" in p["messages"][0]["content"] for p in prompts)
    # the same model on both sides: identical answers, so no metric tells them apart
    assert all(a["differ"] == 0 for a in judge["agreement"])


@pytest.fixture
def no_evaluation(monkeypatch):
    def evaluate(*_a, **_k):
        raise AssertionError("the evaluation ran before the mistake was reported")

    monkeypatch.setattr("tuneloop.cli.eval.evaluate", evaluate)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--judge", "JUDGE"], "add --baseline"),
        (["--baseline", "MODEL", "--judge-rubric", "RUBRIC"], "--judge-rubric needs --judge"),
        (
            ["--baseline", "MODEL", "--judge", "JUDGE", "--judge-rubric", "MISSING"],
            "missing.txt' cannot be read",
        ),
        (["--baseline", "MODEL", "--judge", "JUDGE", "--judge-rubric", "EMPTY"], "empty.txt' is empty"),
        (
            ["--baseline", "MODEL", "--judge", "BADYAML"],
            "judge.yaml:2: unknown key 'rubirc' (did you mean 'rubric'?)",
        ),
        (["--baseline", "MODEL", "--judge", "NOURL"], "judge.yaml: key 'model_name'"),
        (["--baseline", "MODEL", "--judge", "no-such-judge-model"], "no-such-judge-model"),
    ],
)
def test_judge_flag_mistakes_exit_2_before_evaluating(extra, expected, tiny_llama, tmp_path, no_evaluation):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "judge.yaml").write_text(f"model: {tiny_llama}\nrubirc: be fair\n")
    (tmp_path / "nourl").mkdir()
    (tmp_path / "nourl" / "judge.yaml").write_text("base_url: http://127.0.0.1:9/v1\n")
    names = {"JUDGE": str(tiny_llama), "MODEL": str(tiny_llama), "RUBRIC": str(tmp_path / "empty.txt"),
             "MISSING": str(tmp_path / "missing.txt"), "EMPTY": str(tmp_path / "empty.txt"),
             "BADYAML": str(tmp_path / "judge.yaml"), "NOURL": str(tmp_path / "nourl" / "judge.yaml")}  # fmt: skip
    args = [names.get(a, a) for a in extra]
    result, output = _run(str(tiny_llama), "--data", str(_data(tmp_path)), *args)
    assert result.exit_code == 2, output
    assert expected in " ".join(output.split()), output
    assert "Traceback" not in output


def test_judge_with_tasks_is_refused(tiny_llama, tmp_path):
    result, output = _run(str(tiny_llama), "--tasks", "tuneloop_general", "--baseline", str(tiny_llama),
                          "--judge", str(tiny_llama))  # fmt: skip
    assert result.exit_code == 2 and "--judge compares answers to --data questions" in output
