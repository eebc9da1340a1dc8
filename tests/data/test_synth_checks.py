"""The synthesis' pure parts: reply parsing, the grounding heuristic, language, eval leakage."""

from __future__ import annotations

import json

import pytest

from tuneloop.data.synth.grounding import ChunkIndex
from tuneloop.data.synth.leakage import EvalIndex, load_eval_questions
from tuneloop.data.synth.parse import MalformedReply, parse_reply
from tuneloop.data.synth.prompts import kinds_for, language, messages, reply_schema
from tuneloop.errors import TuneloopError

CHUNK = "The Arc R5 router allows up to 96 connected devices and costs USD 1,399 in China. Hold Reset for 12 seconds."
ZH = "所有 Nimbus 路由器享有 24 个月保修。保修期内，设备故障可免费更换。"


def test_json_in_fences_after_chatter_or_as_a_bare_list_parses():
    item = {"kind": "fact", "question": "Which port?", "answer": "WAN.", "paraphrases": ["Port?", "..."]}
    fenced = "Here you go:\n```json\n" + json.dumps({"items": [item]}) + "\n```"
    assert parse_reply(fenced, ["fact"])[0][0].paraphrases == ["Port?"]  # not the placeholder
    bare, bad = parse_reply("[" + json.dumps(item) + ', {"question": ""}]', ["number", "fact"])
    assert len(bare) == 1 and bad == 1
    unknown_kind, _ = parse_reply(json.dumps({"items": [{**item, "kind": "trivia"}]}), ["number"])
    assert unknown_kind[0].kind == "number"  # the kind asked at that position


@pytest.mark.parametrize(
    "text",
    [
        "no json here",
        '{"items": "x"}',
        '{"items": [{"question": "Q"}]}',
        '{"ite',
        '{"items": [{"question": "...", "answer": "..."}]}',  # a prompt's placeholders copied
    ],
)
def test_a_reply_without_a_usable_item_is_malformed(text):
    with pytest.raises(MalformedReply):
        parse_reply(text, ["fact"])


def test_a_wrong_number_is_ungrounded_even_when_the_words_match():
    idx = ChunkIndex(CHUNK)
    assert idx.check("The Arc R5 allows up to 96 connected devices.", 0.6).grounded
    assert idx.check("It costs 1399 yuan in China.", 0.5).grounded  # thousands separator ignored
    wrong = idx.check("The Arc R5 allows up to 128 connected devices.", 0.6)
    assert not wrong.grounded and wrong.missing_numbers == ("128",)
    assert not idx.check("Bluetooth pairing needs the companion smartphone application.", 0.6).grounded


def test_chinese_answers_are_checked_by_character_pairs():
    idx = ChunkIndex(ZH)
    assert idx.check("Nimbus 路由器享有 24 个月保修。", 0.6).grounded
    assert not idx.check("路由器可以退货并获得全额退款。", 0.6).grounded
    assert not idx.check("享有 36 个月保修。", 0.6).grounded


def test_language_is_chosen_per_chunk_and_prompts_follow_it():
    assert language(ZH) == "zh" and language(CHUNK) == "en"
    assert language("Arc R7 快速入门：按住 Reset 键 12 秒") == "zh"
    zh = messages(ZH, "zh.md", "zh", ["fact", "number"], 1)
    assert "用中文" in zh[1]["content"] and "数字" in zh[1]["content"]
    en = messages(CHUNK, "en.md", "en", ["fact", "comparison"], 0)
    assert "comparison of two things" in en[1]["content"] and CHUNK in en[1]["content"]


def test_chunks_start_at_different_kinds_so_all_kinds_get_asked():
    assert kinds_for(3, ["fact", "number", "procedure", "comparison"], 2) == [
        "procedure",
        "comparison",
        "fact",
    ]


def test_the_reply_schema_bounds_items_and_rewordings():
    schema = reply_schema(3, ["fact", "number", "fact"], 2, max_chars=100)
    items = schema["properties"]["items"]
    assert items["maxItems"] == 3 and items["items"]["properties"]["kind"]["enum"] == ["fact", "number"]
    assert items["items"]["properties"]["paraphrases"]["maxItems"] == 2
    assert "paraphrases" not in reply_schema(1, ["fact"], 0)["properties"]["items"]["items"]["properties"]


def test_eval_leakage_by_normalized_text_and_ngram_overlap():
    idx = EvalIndex(
        ["How many devices can an Arc R7 serve at once?", "Arc R7 的管理员用户名是什么？"], 6, 0.5
    )
    assert idx.leak("how many devices can an arc r7 serve at once") is not None
    assert idx.leak("Tell me: how many devices can an Arc R7 serve at once, roughly?") is not None
    assert idx.leak("What color is the Arc R5?") is None
    assert idx.leak("Arc R7 的管理员用户名是什么") is not None
    assert idx.leak("Drift 节点最多可以添加几个？") is None


def test_eval_files_with_bad_lines_are_named(tmp_path):
    f = tmp_path / "heldout.jsonl"
    f.write_text('{"question": "ok?"}\n{not json\n')
    with pytest.raises(TuneloopError, match=r"heldout.jsonl:2: not JSON"):
        load_eval_questions([str(f)])
    with pytest.raises(TuneloopError, match="does not exist"):
        load_eval_questions([str(tmp_path / "missing.jsonl")])
