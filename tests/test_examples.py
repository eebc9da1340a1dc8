"""Fast consistency checks for the example corpus and QA sets under examples/acme-kb/."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import pytest

KB = Path(__file__).resolve().parent.parent / "examples" / "acme-kb"
DOCS = KB / "docs"
QA = KB / "qa"
CJK = re.compile(r"[\u4e00-\u9fff]")


def _load(name: str) -> list[dict]:
    rows = []
    for n, line in enumerate((QA / name).read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{n}: blank line"
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:  # pragma: no cover - failure path
            pytest.fail(f"{name}:{n}: invalid JSON: {e}")
    return rows


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _load("train.jsonl")


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return _load("heldout.jsonl")


def _question(row: dict) -> str:
    return row["messages"][0]["content"]


def _norm(text: str) -> str:
    """Case-, markup- and whitespace-insensitive form used to find answers in the docs."""
    text = html.unescape(text).lower().replace("*", "").replace("`", "")
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("name", ["train.jsonl", "heldout.jsonl"])
def test_rows_well_formed(name: str) -> None:
    for row in _load(name):
        rid = row.get("id")
        assert isinstance(rid, str) and rid, row
        assert row.get("lang") in {"en", "zh"}, rid
        answer = row.get("answer")
        assert isinstance(answer, str) and answer.strip(), rid
        msgs = row.get("messages")
        assert isinstance(msgs, list) and len(msgs) == 2, rid
        assert [m.get("role") for m in msgs] == ["user", "assistant"], rid
        for m in msgs:
            assert isinstance(m.get("content"), str) and m["content"].strip(), rid
        reply = msgs[1]["content"]
        assert answer in reply, f"{rid}: answer {answer!r} not verbatim in {reply!r}"
        if row["lang"] == "en":
            assert len(reply.split()) <= 25, f"{rid}: assistant answer too long"
        else:
            assert CJK.search(_question(row)), f"{rid}: zh row without Chinese question"
            assert len(reply) <= 60, f"{rid}: assistant answer too long"


def test_ids_unique(train: list[dict], heldout: list[dict]) -> None:
    ids = [r["id"] for r in train + heldout]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, dupes


def test_sizes(train: list[dict], heldout: list[dict]) -> None:
    assert 120 <= len(train) <= 160
    assert 40 <= len(heldout) <= 60


@pytest.mark.parametrize("name", ["train.jsonl", "heldout.jsonl"])
def test_chinese_share(name: str) -> None:
    rows = _load(name)
    share = sum(r["lang"] == "zh" for r in rows) / len(rows)
    assert 0.15 <= share <= 0.40, share


def test_heldout_not_in_train(train: list[dict], heldout: list[dict]) -> None:
    train_qs = {_question(r).strip().lower() for r in train}
    leaked = [r["id"] for r in heldout if _question(r).strip().lower() in train_qs]
    assert not leaked, leaked


def test_heldout_links_and_facts(train: list[dict], heldout: list[dict]) -> None:
    by_id = {r["id"]: r for r in train}
    train_answers = {r["answer"] for r in train}
    kinds = {"paraphrase": 0, "unseen-phrasing": 0}
    for r in heldout:
        kind = r.get("kind", "paraphrase")
        assert kind in kinds, r["id"]
        kinds[kind] += 1
        if "paraphrase_of" in r:
            src = by_id.get(r["paraphrase_of"])
            assert src is not None, f"{r['id']}: paraphrase_of {r['paraphrase_of']!r} not in train"
            assert src["answer"] == r["answer"], r["id"]
        if "source_fact" in r:
            assert r["source_fact"] in by_id, r["id"]
        assert "paraphrase_of" in r or "source_fact" in r, r["id"]
        assert r["answer"] in train_answers, f"{r['id']}: held-out fact not taught in train"
    assert kinds["paraphrase"] > kinds["unseen-phrasing"] >= 1, kinds


def test_answers_grounded_in_docs(train: list[dict], heldout: list[dict]) -> None:
    corpus = _norm("\n".join(p.read_text(encoding="utf-8") for p in DOCS.iterdir() if p.is_file()))
    missing = sorted({r["answer"] for r in train + heldout if _norm(r["answer"]) not in corpus})
    assert not missing, f"answers not found in docs: {missing}"


def test_doc_formats() -> None:
    files = [p for p in DOCS.iterdir() if p.is_file()]
    assert 12 <= len(files) <= 16, len(files)
    suffixes = {p.suffix for p in files}
    assert {".md", ".html", ".txt", ".csv", ".jsonl"} <= suffixes, suffixes
    assert sum(p.stat().st_size for p in files) < 200 * 1024
    zh_docs = [p for p in files if len(CJK.findall(p.read_text(encoding="utf-8"))) >= 50]
    assert len(zh_docs) >= 4, zh_docs


def test_html_has_boilerplate_to_strip() -> None:
    for page in DOCS.glob("*.html"):
        text = page.read_text(encoding="utf-8").lower()
        for tag in ("<nav", "<footer", "<script", "<main"):
            assert tag in text, f"{page.name} lacks {tag}"


def test_support_chats_messages_format() -> None:
    for line in (DOCS / "support-chats.jsonl").read_text(encoding="utf-8").splitlines():
        msgs = json.loads(line)["messages"]
        assert msgs and all(m["role"] in {"system", "user", "assistant"} and m["content"] for m in msgs)
        assert any(m["role"] == "assistant" for m in msgs)


def test_planted_issues_present() -> None:
    files = [p for p in DOCS.iterdir() if p.is_file()]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert len(digests) - len(set(digests)) == 1, "expected exactly one exact-duplicate pair"
    assert (DOCS / "faq.md").read_bytes() != (DOCS / "faq-wiki-export.md").read_bytes()
    chats = (DOCS / "support-chats.jsonl").read_text(encoding="utf-8")
    assert "jane.doe@example.com" in chats
    assert re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", chats), "no Chinese mobile number"
    assert re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", chats), "no IP address"
