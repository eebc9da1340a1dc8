"""`tuneloop data synth` against a real OpenAI-compatible HTTP teacher (tests/data/synth_teacher.py)
through the official `openai` client: the dataset it writes, and what happens when the teacher
misbehaves (malformed JSON, 500s, timeouts, down), is interrupted, or would leak eval questions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from synth_teacher import completion, good, passage, qa_reply, serve
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.data.layout import open_split
from tuneloop.data.synth import SynthConfig, TeacherRequest
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge_config import JudgeConfig
from tuneloop.flows.synth import UpstreamTeacher, run_synth

DOCS = {
    "en-router.md": "# Arc R5\n\nThe Arc R5 router allows up to 96 connected devices and costs USD 189. "
    "It has 3 LAN ports and a 2.5 GbE WAN port for fast internet.\n",
    "en-mesh.md": "# Drift M2\n\nDrift M2 mesh nodes connect to the main router over Wi-Fi 6E backhaul. "
    "A network holds up to 7 Drift nodes, and each node covers 120 square meters.\n",
    "zh-warranty.md": "# 保修政策\n\n所有 Nimbus 路由器享有 24 个月保修，客服邮箱 help@nimbus-labs.cn。保修期内，设备故障可免费更换，需提供购买凭证和序列号。\n",
}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def config(url: str, tok_dir: str, **kw) -> SynthConfig:
    base = {
        "teacher": url,
        "teacher_model": "teacher",
        "tokenizer": tok_dir,
        "chunk_tokens": 512,
        "questions_per_chunk": 1,
        "paraphrases": 1,
        "retries": 1,
        "http_retries": 0,
        "timeout_s": 5,
        "val_fraction": 0.34,
    }
    return SynthConfig(**{**base, **kw})


def rows(out: Path) -> list[dict]:
    found = []
    for split in ("train", "val"):
        s = open_split(str(out), split)
        found += [json.loads(line) for _, _, line in s.lines()] if s else []
    return found


def test_rows_are_chat_rows_with_their_source_in_the_prepare_layout(docs, tok_dir, tmp_path):
    with serve() as teacher:
        result = run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir))
    m = result.manifest
    assert m["kind"] == "sft" and m["counts"]["chunks"] == 3 and m["counts"]["rows"] == 6
    assert m["counts"]["train_rows"] + m["counts"]["val_rows"] == 6 and m["counts"]["val_chunks"] == 1
    assert m["grounding"] == {"checked": 6, "grounded": 6, "fraction": 1.0}
    assert m["pii"] == {"mode": "redact", "email": 1}
    table = pq.read_table(tmp_path / "out" / "train" / "part-00000.parquet")
    assert table.column_names == ["messages", "tools", "source"]
    assert json.loads(table.column("source")[0].as_py())["doc"].endswith(".md")
    got = rows(tmp_path / "out")
    assert len(got) == 6
    for row in got:
        assert [msg["role"] for msg in row["messages"]] == ["user", "assistant"]
        assert row["source"]["doc"].endswith(".md") and row["source"]["chunk"] == 0
    # a chunk's rows (question and its rewording) stay on one side of the split
    val = [json.loads(line) for _, _, line in open_split(str(tmp_path / "out"), "val").lines()]
    assert len({r["source"]["doc"] for r in val}) == 1 and len(val) == 2
    # structured output was asked for, with the schema
    assert all(b["response_format"]["type"] == "json_schema" for b in teacher.calls)


def test_a_chinese_chunk_is_asked_in_chinese_and_gets_chinese_questions(docs, tok_dir, tmp_path):
    with serve() as teacher:
        run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir))
    zh_call = next(b for b in teacher.calls if "zh-warranty" in passage(b)[0])
    assert "<EMAIL>" in passage(zh_call)[1] and "help@" not in json.dumps(zh_call)  # redacted first
    assert "只用 JSON 回复" in zh_call["messages"][0]["content"]
    en_call = next(b for b in teacher.calls if "en-router" in passage(b)[0])
    assert "Reply with JSON only" in en_call["messages"][0]["content"]
    zh_rows = [r for r in rows(tmp_path / "out") if "zh-warranty" in r["source"]["doc"]]
    assert len(zh_rows) == 2 and all(r["source"]["lang"] == "zh" for r in zh_rows)
    assert all("文档" in r["messages"][0]["content"] for r in zh_rows)


def test_malformed_replies_are_retried_then_skipped_with_a_counted_reason(docs, tok_dir, tmp_path):
    seen: dict[str, int] = {}

    async def behave(teacher, body):
        doc = passage(body)[0]
        seen[doc] = seen.get(doc, 0) + 1
        if "mesh" in doc:
            return completion("Sure! Here are some questions: 1. What is Drift?")  # never JSON
        if "router" in doc and seen[doc] == 1:
            return completion('{"items": [{"kind": "fact", "question": "What')  # cut off, once
        return completion(qa_reply(body))

    with serve(behave) as teacher:
        m = run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir, retries=2)).manifest
    assert teacher.calls_for("mesh") == 3  # the first try and two retries
    assert teacher.calls_for("router") == 2  # the retry worked
    assert m["removed"]["chunks"] == {"malformed": 1}
    assert m["counts"]["chunks_with_rows"] == 2
    assert "no JSON" in m["samples"]["malformed"][0]["error"]


def test_500s_and_timeouts_are_retried_then_skipped_as_teacher_errors(docs, tok_dir, tmp_path):
    async def behave(teacher, body):
        doc = passage(body)[0]
        if "mesh" in doc:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if "zh" in doc:
            await asyncio.sleep(3)  # past timeout_s
        return await good(teacher, body)

    with serve(behave) as teacher:
        cfg = config(teacher.url, tok_dir, http_retries=1, retries=1, timeout_s=1.0)
        m = run_synth([str(docs)], tmp_path / "out", cfg).manifest
    assert teacher.calls_for("mesh") == 4  # (1 + 1 client retry) x (1 + 1 chunk retry)
    assert m["removed"]["chunks"] == {"teacher_error": 2}
    errors = " ".join(s["error"] for s in m["samples"]["teacher_error"])
    assert "500" in errors and "no answer" in errors
    assert m["counts"]["rows"] == 2


def test_a_teacher_that_is_down_ends_with_an_error_and_no_dataset(docs, tok_dir, tmp_path):
    cfg = config("http://127.0.0.1:9/v1", tok_dir, retries=1)  # port 9: nothing listens
    with pytest.raises(TuneloopError, match="teacher_error: 3") as e:
        run_synth([str(docs)], tmp_path / "out", cfg)
    assert "first error: no answer from the teacher" in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_wrong_key_stops_the_run_at_once_naming_the_key(docs, tok_dir, tmp_path, monkeypatch):
    async def behave(teacher, body):
        return web.json_response({"error": {"message": "invalid api key"}}, status=401)

    monkeypatch.setenv("TEACHER_KEY", "wrong")
    with serve(behave) as teacher, pytest.raises(TuneloopError, match="refused the key"):
        run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir, api_key_env="TEACHER_KEY"))
    assert len(teacher.calls) == 3  # one wave, no retries of a fatal error


class _Interrupted(UpstreamTeacher):
    """The real upstream teacher, killed (Ctrl-C) while asking about its second wave."""

    asked = 0

    def ask(self, requests: list[TeacherRequest]):
        _Interrupted.asked += 1
        if _Interrupted.asked == 2:
            raise KeyboardInterrupt
        return super().ask(requests)


def test_a_resumed_run_asks_only_about_the_chunks_not_done(docs, tok_dir, tmp_path, monkeypatch):
    with serve() as teacher:
        cfg = config(teacher.url, tok_dir, concurrency=1)
        monkeypatch.setattr("tuneloop.flows.synth.UpstreamTeacher", _Interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_synth([str(docs)], tmp_path / "out", cfg)
        assert not (tmp_path / "out" / "manifest.json").exists() and len(teacher.calls) == 1
        monkeypatch.undo()
        resumed = run_synth([str(docs)], tmp_path / "out", cfg)
        assert resumed.asked == 2 and len(teacher.calls) == 3
        whole = run_synth([str(docs)], tmp_path / "whole", cfg)
        assert resumed.manifest["fingerprint"] == whole.manifest["fingerprint"]
        # a rerun with everything done asks nothing; other settings refuse the old progress by name
        again = run_synth([str(docs)], tmp_path / "out", cfg)
        assert again.asked == 0 and len(teacher.calls) == 6
        other = config(teacher.url, tok_dir, questions_per_chunk=2)
        with pytest.raises(TuneloopError, match="questions_per_chunk"):
            run_synth([str(docs)], tmp_path / "out", other)
        fresh = run_synth([str(docs)], tmp_path / "out", other, fresh=True)
        assert fresh.asked == 3


def test_eval_questions_and_duplicates_do_not_reach_the_rows(docs, tok_dir, tmp_path):
    (docs / "en-router-copy.md").write_text(
        "# Arc R5 again\n\nThe Arc R5 router allows up to 96 connected devices and costs USD 189. "
        "Its finish is Chalk White and it weighs 610 g.\n",
        encoding="utf-8",
    )
    heldout = tmp_path / "heldout.jsonl"
    items = [
        {
            "messages": [
                {"role": "user", "content": "what is SAID about the Arc R5 router"},
                {"role": "assistant", "content": "96"},
            ]
        },  # the same after normalization
        {"question": "What is said about Drift M2 mesh nodes, please?"},  # n-gram overlap
    ]
    heldout.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    with serve() as teacher:
        m = run_synth(
            [str(docs)], tmp_path / "out", config(teacher.url, tok_dir, eval=[str(heldout)])
        ).manifest
    # router: 2 leaked; the copy's question is the same as the router's: 2 duplicates; mesh: 2 leaked
    assert m["removed"]["rows"] == {"duplicate": 2, "leaked_eval": 4}
    questions = [r["messages"][0]["content"] for r in rows(tmp_path / "out")]
    assert not any("Arc R5" in q or "Drift" in q for q in questions) and len(questions) == 2
    assert {s["eval_question"] for s in m["samples"]["leaked_eval"]} == {
        i.get("question") or i["messages"][0]["content"] for i in items
    }


def test_answers_not_supported_by_the_chunk_are_counted_ungrounded(docs, tok_dir, tmp_path):
    async def behave(teacher, body):
        doc, _, _ = passage(body)
        if "router" in doc:  # a number the chunk does not have
            item = {
                "kind": "number",
                "question": "How many devices?",
                "answer": "Up to 128 devices.",
                "paraphrases": [],
            }
            return completion(json.dumps({"items": [item]}))
        return await good(teacher, body)

    with serve(behave) as teacher:
        m = run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir)).manifest
    assert m["removed"]["rows"] == {"ungrounded": 1}
    assert m["grounding"]["fraction"] == pytest.approx(4 / 5)


def test_the_llm_judge_removes_answers_it_finds_contradicted(docs, tok_dir, tmp_path):
    async def behave(teacher, body):
        if body["model"] == "judge":  # the judge of `tuneloop eval`, asked about each pair once
            said = body["messages"][-1]["content"]
            return completion("Verdict: contradicts" if "Drift" in said else "Verdict: agrees")
        return await good(teacher, body)

    with serve(behave) as teacher:
        judge = JudgeConfig(
            base_url=teacher.url, model_name="judge", cache=tmp_path / "j.sqlite", log=tmp_path / "j.jsonl"
        )
        m = run_synth([str(docs)], tmp_path / "out", config(teacher.url, tok_dir), judge=judge).manifest
    assert sum(b["model"] == "judge" for b in teacher.calls) == 3  # not once per rewording
    assert m["removed"]["rows"] == {"judge_contradicts": 2}
    assert m["grounding"] == {"checked": 6, "grounded": 4, "fraction": round(4 / 6, 4)}
    assert not any("Drift" in r["messages"][1]["content"] for r in rows(tmp_path / "out"))


def test_an_output_folder_inside_the_docs_is_not_read_back(docs, tok_dir, tmp_path):
    with serve() as teacher:
        run_synth([str(docs)], docs / "qa", config(teacher.url, tok_dir))
        again = run_synth([str(docs)], docs / "qa", config(teacher.url, tok_dir))
    assert again.asked == 0 and again.manifest["counts"]["chunks"] == 3


def test_an_empty_or_unreadable_docs_folder_is_an_error_naming_it(tok_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = config("http://127.0.0.1:9/v1", tok_dir)
    with pytest.raises(TuneloopError, match=f"docs folder '{empty}' is empty"):
        run_synth([str(empty)], tmp_path / "out", cfg)
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "scan.md").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(TuneloopError, match=f"no text to ask about in '{binary}'.*scan.md"):
        run_synth([str(binary)], tmp_path / "out", cfg)
    with pytest.raises(TuneloopError, match="does not exist"):
        run_synth([str(tmp_path / "nope")], tmp_path / "out", cfg)


def test_the_cli_writes_the_dataset_and_prints_counts(docs, tok_dir, tmp_path):
    with serve() as teacher:
        args = [
            "data",
            "synth",
            str(docs),
            "--out",
            str(tmp_path / "out"),
            "--teacher",
            teacher.url,
            "--teacher-model",
            "teacher",
            "-q",
            "1",
            "--max-chunks",
            "2",
            f"tokenizer={tok_dir}",
            "chunk_tokens=512",
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "grounded fraction" in result.output and "rows train / val" in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["chunks"] == 2
    bad = CliRunner().invoke(
        app, ["data", "synth", str(docs), "--out", str(tmp_path / "o2"), "--teacher", "http://x/v1"]
    )
    assert bad.exit_code != 0 and "teacher_model" in bad.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "empty"), "--out", str(tmp_path / "o3")])
    output = " ".join(empty.output.split())
    assert empty.exit_code == 2 and f"docs folder '{tmp_path / 'empty'}' is empty" in output
    assert "Traceback" not in output
