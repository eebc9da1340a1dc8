"""End to end on the local engine: golden mixed corpus, byte-identical reruns, workers, kinds, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from shards import all_files, split_rows, split_table, split_text

from tuneloop.data import prepare

GOLDEN = Path(__file__).parent / "golden"


def _summary(manifest: dict) -> dict:
    """The parts of the manifest that do not depend on the tokenizer or on where the test runs."""
    return {k: manifest[k] for k in ("counts", "removed", "pii", "skipped", "dedup", "inputs")}


def test_golden_mixed_corpus(mixed_corpus: Path, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(mixed_corpus.parent)  # relative input -> ids and paths independent of tmp dirs
    manifest = prepare(["corpus"], "out", make_cfg(chunk__max_tokens=2048), workers=1)
    got = {f"{s}.jsonl": split_text(Path("out"), s) for s in ("train", "val")}
    got["summary.json"] = json.dumps(_summary(manifest), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    if os.environ.get("TUNELOOP_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for name, text in got.items():
            (GOLDEN / name).write_text(text, encoding="utf-8")
    for name, text in got.items():
        assert text == (GOLDEN / name).read_text(encoding="utf-8"), f"{name} differs from tests/data/golden"


def test_mixed_corpus_outcome_is_what_each_step_promises(
    mixed_corpus: Path, make_cfg, tmp_path: Path
) -> None:
    m = prepare([str(mixed_corpus)], tmp_path / "out", make_cfg(), workers=1)
    text = "\n".join(r["text"] for s in ("train", "val") for r in split_rows(tmp_path / "out", s))
    assert m["removed"]["dedup.exact"] == 2  # the copy and the case/punctuation variant
    assert m["removed"]["dedup.near"] == 1  # "the invoices" vs "invoices"
    assert m["removed"]["quality.too_short"] == 1 and m["removed"]["quality.repeated_ngrams"] == 1
    # PII runs before dedup, so the IP is counted in all three copies
    assert m["pii"] == {"mode": "redact", "email": 1, "phone": 1, "ip": 3, "id_card": 1}
    assert "help@example.com" not in text and "<EMAIL>" in text and "<ID_CARD>" in text
    assert "Orders ship within two business days" in text and "Login" not in text  # HTML main text only
    assert "北京是中国的首都" in text  # GBK file decoded
    assert m["tokens"]["max"] <= 64 and m["tokens"]["over_max_tokens"] == 0
    assert m["counts"]["train_rows"] + m["counts"]["val_rows"] == m["tokens"]["rows"]
    assert m["counts"]["val_documents"] >= 1 and m["counts"]["documents"] == m["counts"]["dedup_near"]
    assert all(len(i["sha256"]) == 64 for i in m["inputs"]) and len(m["inputs"]) == 7


def test_same_input_and_config_give_byte_identical_outputs_for_any_worker_count(
    mixed_corpus: Path, make_cfg, tmp_path: Path
) -> None:
    prepare([str(mixed_corpus)], tmp_path / "a", make_cfg(), workers=1)
    prepare([str(mixed_corpus)], tmp_path / "b", make_cfg(), workers=2)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert a == b and "train/part-00000.jsonl" in a and "train/part-00000.parquet" in a
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tuneloop")]


def test_config_change_changes_the_fingerprint(mixed_corpus: Path, make_cfg, tmp_path: Path) -> None:
    a = prepare([str(mixed_corpus)], tmp_path / "a", make_cfg(), workers=1)
    b = prepare([str(mixed_corpus)], tmp_path / "b", make_cfg(split__seed=1, pii__mode="off"), workers=1)
    assert a["fingerprint"] != b["fingerprint"]
    assert b["config"]["pii"]["mode"] == "off" and a["config"]["split"]["seed"] == 42


def test_chunks_of_one_document_never_straddle_train_and_val(tmp_path: Path, make_cfg) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(12):
        body = " ".join(
            f"Document {i} sentence {j} talks about topic {i * 7 + j} in some detail." for j in range(12)
        )
        (corpus / f"d{i:02d}.txt").write_text(body)
    m = prepare(
        [str(corpus)], tmp_path / "out", make_cfg(split__val_fraction=0.25, dedup__near=False), workers=2
    )
    sides = {}
    for split in ("train", "val"):
        for row in split_rows(tmp_path / "out", split):
            doc = row["text"].split("Document ")[1].split(" ")[0]
            sides.setdefault(doc, set()).add(split)
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 12
    assert m["counts"]["val_documents"] == 3 and m["counts"]["train_rows"] > 12


def test_sft_corpus_in_three_formats(tmp_path: Path, make_cfg) -> None:
    rows = [
        {"instruction": "Say hi in Chinese", "input": "", "output": "你好"},
        {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
        {
            "messages": [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    m = prepare(
        [str(tmp_path / "chat.jsonl")],
        tmp_path / "out",
        make_cfg(kind="sft", split__val_fraction=0),
        workers=1,
    )
    out = split_rows(tmp_path / "out", "train")
    assert [r["messages"][-1]["content"] for r in out] == ["你好", "4", "Paris"]
    assert m["removed"] == {"format.no_assistant_answer": 1}
    assert m["skipped"]["items"][0]["file"].endswith("chat.jsonl") and m["skipped"]["items"][0]["line"] == 4
    # token counts are of the conversation rendered with the chat template, as the trainer sees it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_cfg().tokenizer)
    expected = [
        len(
            tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
        )
        for r in out
    ]
    assert m["tokens"]["counted"] == "chat template applied" and m["tokens"]["total"] == sum(expected)
    table = split_table(tmp_path / "out", "train")
    # tools: the JSON of an SFT row's function tools (null for rows without; data/output.py)
    assert table.column_names == ["messages", "tools"] and table.num_rows == 3
    assert table.column("tools").null_count == 3


def test_preference_corpus(tmp_path: Path, make_cfg) -> None:
    rows = [
        {"prompt": f"Question number {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}
        for i in range(4)
    ]
    (tmp_path / "pref.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = prepare(
        [str(tmp_path / "pref.jsonl")],
        tmp_path / "out",
        make_cfg(kind="preference", dedup__near=False),
        workers=1,
    )
    assert m["counts"]["train_rows"] + m["counts"]["val_rows"] == 4
    assert split_table(tmp_path / "out", "val").column_names == ["prompt", "chosen", "rejected"]


def test_bad_input_corpus_never_crashes_and_reports_everything(
    bad_corpus: Path, make_cfg, tmp_path: Path
) -> None:
    m = prepare([str(bad_corpus)], tmp_path / "out", make_cfg(), workers=2)
    reasons = {(Path(s["file"]).name, s["line"]): s["reason"] for s in m["skipped"]["items"]}
    assert "binary" in reasons[("binary.txt", None)]
    assert any(
        Path(s["file"]).name == "corrupt.jsonl.gz" and "truncated gzip" in s["reason"]
        for s in m["skipped"]["items"]
    )
    assert "not gzip" in reasons[("notgzip.jsonl.gz", None)]
    assert reasons[("empty.txt", None)] == "empty file"
    assert "invalid JSON" in reasons[("lines.jsonl", 2)]
    assert "wrong shape" in reasons[("lines.jsonl", 3)] and "wrong shape" in reasons[("lines.jsonl", 4)]
    assert "cannot decode as utf-8" in reasons[("badenc.jsonl", 251)]
    assert "unsupported file type" in reasons[("image.png", None)]
    assert "Parquet" in reasons[("broken.parquet", None)]
    corrupt = next(i for i in m["inputs"] if i["path"].endswith("corrupt.jsonl.gz"))
    assert (
        corrupt["records"] > 10 and corrupt["documents"] == corrupt["records"]
    )  # rows before the cut are kept
    assert m["removed"]["quality.too_short"] == 250  # the short lines of badenc.jsonl
    assert m["counts"]["documents"] == 2 + corrupt["documents"]
    assert len(m["inputs"]) == 9 and all(i["sha256"] for i in m["inputs"])


def test_output_folder_inside_the_input_is_not_read_back(mixed_corpus: Path, make_cfg) -> None:
    out = mixed_corpus / "prepared"
    first = prepare([str(mixed_corpus)], out, make_cfg(), workers=1)
    second = prepare([str(mixed_corpus)], out, make_cfg(), workers=1)
    assert first["fingerprint"] == second["fingerprint"] and len(second["inputs"]) == 7


def test_pretrain_rows_without_text_are_listed_or_rendered(tmp_path: Path, make_cfg) -> None:
    """CSV rows and chat rows with no text field: each skip has file, line and reason; or, with
    input.chat_to_text, chat rows become 'Role: content' text."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "faq.csv").write_text(
        "question,answer\nHow do refunds work?,Refunds go back to the original payment method.\n"
        "Where is my order?,Tracking numbers are emailed when the carrier scans the parcel.\n"
    )
    chats = [
        {"messages": [{"role": "user", "content": "What does the warranty cover?"},
                      {"role": "assistant", "content": "Manufacturing defects for two years from purchase."}]},
        {"conversations": [{"from": "human", "value": "退货需要多久？"}, {"from": "gpt", "value": "收到退货后七个工作日内退款。"}]},
        {"instruction": "Summarize the shipping policy.", "input": "", "output": "Orders ship within two business days."},
        {"text": "A plain pretraining document that is long enough to pass the quality filters."},
    ]  # fmt: skip
    (corpus / "chat.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in chats) + "\n")
    m = prepare([str(corpus)], tmp_path / "out", make_cfg(split__val_fraction=0), workers=1)
    assert m["removed"]["format.missing_text"] == 5 and m["counts"]["format"] == 1
    listed = {
        (Path(s["file"]).name, s["line"]) for s in m["skipped"]["items"] if "no string field" in s["reason"]
    }
    assert listed == {("faq.csv", 2), ("faq.csv", 3), ("chat.jsonl", 1), ("chat.jsonl", 2), ("chat.jsonl", 3)}

    m = prepare(
        [str(corpus)],
        tmp_path / "out2",
        make_cfg(split__val_fraction=0, input__chat_to_text=True, chunk__max_tokens=2048),
        workers=1,
    )
    texts = [r["text"] for r in split_rows(tmp_path / "out2", "train")]
    assert m["removed"].get("format.missing_text") == 2  # the CSV rows: no text, not a conversation
    assert (
        "User: What does the warranty cover?\n\nAssistant: Manufacturing defects for two years from purchase."
        in texts
    )
    assert "User: 退货需要多久？\n\nAssistant: 收到退货后七个工作日内退款。" in texts
    assert "User: Summarize the shipping policy.\n\nAssistant: Orders ship within two business days." in texts
