"""Private by default: what the gateway stores about people (a real server, the official `openai` client).

PII redacted in the request log and in feedback text, end users as pseudonyms, owner-only files,
deny patterns on token-id prompts, and retention (the server's and `tuneloop logs purge`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.interactions.feedback import FeedbackStore, RecentResponses
from tuneloop.interactions.requestlog import RequestLog, read
from tuneloop.models.loading import load_tokenizer
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore

CN_ID = "11010519491231002X"  # GB 11643 checksum valid
CARD = "6222 0212 3456 7894"  # UnionPay, Luhn valid
EMAIL = "li.wei@example.com"
PHONE = "13812345678"
PERSONAL = f"我的身份证号是{CN_ID}，银行卡 {CARD}，邮箱 {EMAIL}，手机 {PHONE}。"


def config(**kw) -> ServeConfig:
    return ServeConfig.model_validate({"models": [{"name": "fake", "model": "unused"}], **kw})


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ the request log


def test_the_request_log_redacts_pii_and_pseudonymizes_users_by_default(serve, tuneloop_home):
    key, record = KeyStore().create("app")
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        chat = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": PERSONAL}], user="wei@example.com"
        )
        text = client.completions.create(model="fake", prompt=PERSONAL, max_tokens=50, user="wei@example.com")
        pseudonym = s.gateway.privacy.user("wei@example.com")
    assert CN_ID in chat.choices[0].message.content and EMAIL in text.choices[0].text  # answers untouched
    raw = (tuneloop_home / "serve" / "requests.jsonl").read_text()
    for secret in (CN_ID, CARD, EMAIL, PHONE, "wei@example.com"):
        assert secret not in raw
    first, second = read(tuneloop_home / "serve" / "requests.jsonl")
    content = first["request"]["messages"][0]["content"]
    assert content == "我的身份证号是<ID_CARD>，银行卡 <BANK_CARD>，邮箱 <EMAIL>，手机 <PHONE>。"
    assert first["response"]["choices"][0]["message"]["content"] == content  # the echoed answer too
    assert second["request"]["prompt"] == content
    assert first["user"] == first["request"]["user"] == second["user"] == pseudonym
    assert pseudonym.startswith("u-") and len(pseudonym) == 26
    assert first["key_id"] == record.id and first["model"] == "fake"  # ids and labels are not redacted


def test_every_text_is_redacted_but_the_protocol_labels():
    """Fields the redactor was not told about (tool arguments, stop strings) are redacted too."""
    from tuneloop.interactions.privacy import Privacy

    body = {"model": "ops@example.com", "messages": [{"role": "user", "content": f"mail {EMAIL}"}],
            "tools": [{"type": "function", "function": {"arguments": json.dumps({"to": EMAIL})}}],
            "stop": [PHONE], "n": 1}  # fmt: skip
    out = Privacy(True).value(body)
    assert out["model"] == "ops@example.com" and out["n"] == 1  # a label, a number: as they were
    assert out["messages"] == [{"role": "user", "content": "mail <EMAIL>"}] and out["stop"] == ["<PHONE>"]
    assert EMAIL not in json.dumps(out) and out["tools"][0]["type"] == "function"
    assert Privacy(False).value(body) is body


def test_pseudonyms_are_stable_across_restarts_and_differ_per_user(serve):
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:
        before = (s.gateway.privacy.user("alice"), s.gateway.privacy.user("bob"))
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:
        after = (s.gateway.privacy.user("alice"), s.gateway.privacy.user("bob"))
    assert before == after and before[0] != before[1]


def test_the_documented_opt_out_stores_texts_and_users_verbatim(serve, tmp_path):
    log = {"path": str(tmp_path / "log.jsonl"), "redact_pii": False, "pseudonymize_users": False}
    with serve(config(auth={"enabled": False}, log=log), {"fake": FakeClient()}) as s:
        body = {"model": "fake", "prompt": PERSONAL, "max_tokens": 50, "user": "alice"}
        assert httpx.post(s.url + "/v1/completions", json=body).status_code == 200
    [line] = read(tmp_path / "log.jsonl")
    assert line["request"]["prompt"] == PERSONAL and line["user"] == "alice"


# ------------------------------------------------------------------ file modes


def test_logs_and_databases_are_owner_only_rotations_included(serve, tuneloop_home):
    cfg = config(auth={"enabled": False}, log={"max_bytes": 1024, "backups": 2})
    with serve(cfg, {"fake": FakeClient()}) as s:
        for i in range(12):  # ~300 bytes a line: several rollovers
            body = {"model": "fake", "prompt": f"request number {i} " + "x" * 200}
            assert httpx.post(s.url + "/v1/completions", json=body).status_code == 200
        s.gateway.request_log.flush()
    folder = tuneloop_home / "serve"
    assert mode(folder) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert {"requests.jsonl", "requests.jsonl.1", "requests.jsonl.2", "serve.db"} <= set(files)
    for name in files:
        assert mode(folder / name) == 0o600, name


def test_world_readable_files_are_tightened_at_start_with_a_warning(serve, tuneloop_home, caplog):
    folder = tuneloop_home / "serve"
    KeyStore()  # an older server's database, made before files were private
    (folder / "requests.jsonl").write_text("")
    (folder / "requests.jsonl.1").write_text("")
    for path, m in ((folder, 0o755), (folder / "serve.db", 0o644), (folder / "requests.jsonl", 0o644),
                    (folder / "requests.jsonl.1", 0o666)):  # fmt: skip
        os.chmod(path, m)
    with (
        caplog.at_level(logging.WARNING, logger="tuneloop.serve"),
        serve(config(auth={"enabled": False}), {"fake": FakeClient()}),
    ):
        pass
    assert mode(folder) == 0o700
    for name in ("serve.db", "requests.jsonl", "requests.jsonl.1"):
        assert mode(folder / name) == 0o600, name
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "serve.db was readable by other users (mode 644); now 600" in warned
    assert "requests.jsonl.1 was readable by other users (mode 666)" in warned


# ------------------------------------------------------------------ deny patterns on token ids


@pytest.fixture(scope="module")
def tiny_server(tiny_llama, tmp_path_factory):
    from .conftest import run_server

    folder = tmp_path_factory.mktemp("tiny-deny")
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama), "kv_cache_gib": 0.02}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{folder}/serve.db"},
            "log": {"path": str(folder / "requests.jsonl")},
            "input": {"deny": [{"pattern": "secret\\s+plan", "reason": "no plans"}]},
            "warmup": False,
        }
    )
    with run_server(cfg) as s:
        yield s


def test_a_token_id_prompt_that_decodes_to_a_denied_phrase_is_refused(tiny_server, tiny_llama):
    ids = load_tokenizer(tiny_llama).encode("Tell me the SECRET plan", add_special_tokens=True)
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0)
    for prompt in ("Tell me the SECRET plan", ids, [ids]):  # text, token ids, a batch of one
        with pytest.raises(openai.BadRequestError, match="no plans") as e:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
        assert e.value.code == "content_denied"
    fine = load_tokenizer(tiny_llama).encode("Tell me the public plan", add_special_tokens=True)
    out = client.completions.create(model="tiny", prompt=fine, max_tokens=2, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop")


def test_token_ids_for_a_model_without_a_tokenizer_are_refused_only_when_patterns_are_set(serve):
    deny = {"deny": [{"pattern": "secret", "reason": "no"}]}
    with serve(config(auth={"enabled": False}, input=deny), {"fake": FakeClient()}) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "fake", "prompt": [1, 2, 3]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "input.deny" in r.json()["error"]["message"] and "send the prompt as text" in r.text
    with serve(config(auth={"enabled": False}), {"fake": FakeClient()}) as s:  # no patterns: nothing to check
        assert (
            httpx.post(s.url + "/v1/completions", json={"model": "fake", "prompt": [1, 2]}).status_code == 200
        )


# ------------------------------------------------------------------ feedback text


def test_feedback_corrections_and_comments_are_stored_redacted(serve, tuneloop_home):
    key, _ = KeyStore().create("app")
    with serve(config(), {"fake": FakeClient()}) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        body = {"response_id": answer.id, "rating": "down", "correction": f"Write to {EMAIL} or call {PHONE}.",
                "comment": f"my ID is {CN_ID}", "user": "wei"}  # fmt: skip
        r = httpx.post(s.url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"}, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["correction"] == "Write to <EMAIL> or call <PHONE>."
    [stored] = FeedbackStore().list()
    assert stored.correction == "Write to <EMAIL> or call <PHONE>." and stored.comment == "my ID is <ID_CARD>"
    assert stored.user == s.gateway.privacy.user("wei")
    exported = CliRunner().invoke(app, ["feedback", "export"])
    assert exported.exit_code == 0 and EMAIL not in exported.output and CN_ID not in exported.output


# ------------------------------------------------------------------ retention


DAY = 86400.0


def _old_and_new_log(path, now: float) -> None:
    """A rotated file wholly older than 30 days, and a current file straddling the cutoff."""
    line = lambda t, i: json.dumps({"time": t, "response_id": f"r{i}", "status": 200}) + "\n"  # noqa: E731
    rotated = path.with_name(path.name + ".1")
    rotated.write_text(line(now - 50 * DAY, 1) + line(now - 40 * DAY, 2))
    os.utime(rotated, (now - 40 * DAY, now - 40 * DAY))
    path.write_text(line(now - 31 * DAY, 3) + "{not json\n" + line(now - 29 * DAY, 4) + line(now - 60, 5))


def test_logs_purge_removes_old_lines_and_files_and_keeps_new_ones(tuneloop_home):
    path = tuneloop_home / "serve" / "requests.jsonl"
    path.parent.mkdir(parents=True)
    _old_and_new_log(path, time.time())
    before = path.read_text()
    dry = CliRunner().invoke(app, ["logs", "purge", "--dry-run"])  # default: log.retention_days = 30
    assert dry.exit_code == 0, dry.output
    assert "would remove 4 log line(s) older than 30 day(s)" in dry.output and "1 unreadable" in dry.output
    assert path.read_text() == before and path.with_name("requests.jsonl.1").exists()
    done = CliRunner().invoke(app, ["logs", "purge"])
    assert done.exit_code == 0, done.output
    assert "removed 4 log line(s)" in done.output and "1 file(s) deleted whole, 1 rewritten" in done.output
    assert [r["response_id"] for r in read(path)] == ["r4", "r5"]
    assert not path.with_name("requests.jsonl.1").exists()
    assert mode(path) == 0o600
    week = CliRunner().invoke(app, ["logs", "purge", "--older-than", "7"])
    assert "removed 1 log line(s)" in week.output and [r["response_id"] for r in read(path)] == ["r5"]


def test_logs_purge_with_retention_off_needs_a_number(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("log:\n  retention_days: null\n")
    r = CliRunner().invoke(app, ["logs", "purge", "--config", str(cfg)])
    assert r.exit_code == 2 and "retention_days is null" in r.output and "--older-than" in r.output


def test_the_server_applies_retention_at_start_and_forgets_old_answers(serve, tuneloop_home):
    path = tuneloop_home / "serve" / "requests.jsonl"
    path.parent.mkdir(parents=True)
    _old_and_new_log(path, time.time())
    old = RecentResponses(engine=FeedbackStore().engine)
    old.add("chatcmpl-old", "fake", "default", None, "k1")
    old.flush()
    with old.engine.begin() as c:  # recorded 40 days ago
        c.exec_driver_sql("UPDATE responses SET created_at = datetime('now', '-40 days')")
    with serve(config(auth={"enabled": False}, log={"retention_days": 30}), {"fake": FakeClient()}) as s:
        deadline = time.monotonic() + 10
        while len(read(path)) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["response_id"] for r in read(path)] == ["r4", "r5"]
        r = httpx.post(s.url + "/v1/feedback", json={"response_id": "chatcmpl-old", "rating": 5})
        assert r.status_code == 404  # older than the retention: forgotten, like its log line
        assert s.gateway.recent_responses.get("chatcmpl-old") is None


def test_a_purge_never_loses_lines_written_meanwhile(tmp_path):
    """The writer thread and a purge share the log's lock: concurrent lines all survive."""
    from tuneloop.interactions.retention import cutoff, purge_log

    log = RequestLog(tmp_path / "log.jsonl", max_bytes=1 << 30)
    try:
        for i in range(2000):
            log.write({"response_id": f"r{i}", "request": {"prompt": "x" * 100}})
            if i % 500 == 0:
                purge_log(log.path, cutoff(30), log.lock)  # nothing is old: nothing may go
        log.flush()
    finally:
        log.close()
    assert [r["response_id"] for r in read(tmp_path / "log.jsonl")] == [f"r{i}" for i in range(2000)]
