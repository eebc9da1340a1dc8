"""Tool-call conversations through curation: tools, calls and tool results survive intact into the
SFT/DPO/KTO rows (which pass the training row check), and a correction that would mangle a tool-call
answer is rejected with a named, counted reason."""

from __future__ import annotations

import json

from tuneloop.evaluation.rows import check_row
from tuneloop.interactions.records import interaction
from tuneloop.loop.config import CurateSettings
from tuneloop.loop.curate import Known, build_dataset, curate

from .conftest import batch, item

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_7",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
}
LYON = [{"role": "user", "content": "Is it cold in Lyon?"}]
FIXED = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


def tool_item(ratings, prompt=None, calls=(CALL,), answer=None):
    it = item("What is the weather in Paris?", answer, ratings)
    it.prompt = prompt or it.prompt
    it.tools, it.tool_calls = TOOLS, list(calls) or None
    return it


def rows(folder, kind, split="train"):
    return [json.loads(x) for x in (folder / kind / f"{split}.jsonl").read_text().splitlines()]


def build(tmp_path, *items):
    s = CurateSettings(holdout_fraction=0.0)
    out = curate(batch(*items), s, Known.from_rows([], 0.8))
    manifest = build_dataset(out.proposals, out, tmp_path, s, [], [], {"model": "bot", "cycle": 1})
    return out, manifest


def test_an_upvoted_tool_call_trains_as_the_same_call_with_its_tools(tmp_path):
    prompt = [
        {"role": "user", "content": "Weather in Lyon, then in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_7", "content": "12 C"},
    ]
    second = {**CALL, "id": "call_8", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    out, _m = build(tmp_path, tool_item([(5, "u1", None)], prompt=prompt, calls=[second]))
    assert not out.rejected, out.rejected
    [sft] = rows(tmp_path, "sft")
    assert sft["tools"] == TOOLS and sft["messages"][:3] == prompt  # the earlier call and its result intact
    [answer] = sft["messages"][3]["tool_calls"]
    assert answer["function"]["name"] == "get_weather"
    assert json.loads(answer["function"]["arguments"]) == {"city": "Paris"}
    check_row(sft, "sft/train.jsonl", 1, kinds=("sft",))  # what `tuneloop train` accepts
    [kto] = rows(tmp_path, "kto")
    assert kto["label"] is True and kto["tools"] == TOOLS and kto["completion"][0]["tool_calls"]
    check_row(kto, "kto/train.jsonl", 1, kinds=("unpaired",))


def test_a_json_correction_of_a_call_gives_the_corrected_call_and_a_pair_of_calls(tmp_path):
    out, _m = build(tmp_path, tool_item([(1, "u1", FIXED)]))
    assert not out.rejected, out.rejected
    [sft] = rows(tmp_path, "sft")
    assert json.loads(sft["messages"][-1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    [dpo] = rows(tmp_path, "dpo")
    assert dpo["tools"] == TOOLS
    assert json.loads(dpo["chosen"][0]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(dpo["rejected"][0]["tool_calls"][0]["function"]["arguments"]) == {"city": "Lyon"}
    check_row(dpo, "dpo/train.jsonl", 1, kinds=("preference",))


def test_a_text_correction_of_a_call_is_rejected_with_its_reason(tmp_path):
    out, m = build(tmp_path, tool_item([(1, "u1", "It is sunny in Paris.")]))
    assert m["rejections"] == {"correction_not_a_tool_call": 1}
    assert "tool_calls" in out.rejected[0]["detail"]  # the detail says what a call correction looks like
    assert rows(tmp_path, "sft") == [] and rows(tmp_path, "dpo") == []


def test_a_correction_calling_an_unknown_function_is_rejected(tmp_path):
    bad = '{"tool_calls": [{"name": "get_time", "arguments": {"city": "Paris"}}]}'
    out, m = build(tmp_path, tool_item([(1, "u1", bad)]))
    assert m["rejections"] == {"correction_not_a_tool_call": 1}
    assert "get_time" in out.rejected[0]["detail"]


def test_a_text_answer_to_a_request_with_tools_may_be_corrected_with_text(tmp_path):
    out, _m = build(tmp_path, tool_item([(1, "u1", "Sunny, 21 C.")], calls=(), answer="I do not know."))
    assert not out.rejected
    [sft] = rows(tmp_path, "sft")
    assert sft["tools"] == TOOLS and sft["messages"][-1] == {"role": "assistant", "content": "Sunny, 21 C."}


def test_pii_in_earlier_call_arguments_is_redacted_and_the_row_stays_valid(tmp_path):
    leaky = {
        **CALL,
        "function": {"name": "get_weather", "arguments": '{"city": "Lyon", "mail": "jane@example.com"}'},
    }
    prompt = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [leaky]},
        {"role": "tool", "tool_call_id": "call_7", "content": "12 C"},
    ]
    _out, _m = build(tmp_path, tool_item([(5, "u1", None)], prompt=prompt, calls=[CALL]))
    [sft] = rows(tmp_path, "sft")
    args = json.loads(sft["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert "jane@example.com" not in json.dumps(sft) and args["city"] == "Lyon"
    check_row(sft, "sft/train.jsonl", 1, kinds=("sft",))


def test_the_request_log_record_keeps_tools_and_calls():
    record = {
        "response_id": "r1",
        "status": 200,
        "request": {
            "tools": TOOLS,
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_7", "content": "12 C"},
            ],
        },
        "response": {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [CALL]}}]},
    }
    it = interaction(record, [])
    assert it.tools == TOOLS and it.tool_calls == [CALL] and it.answer is None
    assert it.prompt[1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert it.prompt[2]["tool_call_id"] == "call_7"


def test_a_streamed_answer_logged_with_its_assembled_calls_keeps_them():
    record = {
        "response_id": "r2",
        "status": 200,
        "request": {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather?"}], "stream": True},
        "response": {"choices": [{"index": 0, "text": "", "tool_calls": [CALL]}]},
    }
    it = interaction(record, [])
    assert it.tool_calls == [CALL] and it.answer == ""


def test_a_reviewer_edit_of_a_call_must_be_calls_too(tmp_path):
    from tuneloop.interactions.review import ReviewQueue
    from tuneloop.loop.curate import apply_reviews
    from tuneloop.loop.filters import TextFilters

    out = curate(
        batch(tool_item([(5, "u1", None)]), tool_item([(5, "u2", None)], prompt=LYON)),
        CurateSettings(),
        Known.from_rows([], 0.8),
    )
    assert len(out.proposals) == 2 and all(p["chosen_calls"] for p in out.proposals)
    q = ReviewQueue(f"sqlite:///{tmp_path / 'r.db'}")
    q.enqueue("bot", 1, out.proposals)
    a, b = q.list("bot", "pending")
    q.approve(a.id, "ann", edited=FIXED)
    q.approve(b.id, "ann", edited="It is sunny.")
    kept = apply_reviews(out, q.list("bot", cycle=1), TextFilters())
    assert [r["reason"] for r in out.rejected] == ["correction_not_a_tool_call"]
    assert len(kept) == 1
    m = build_dataset(
        kept, out, tmp_path / "ds", CurateSettings(holdout_fraction=0.0), [], [], {"model": "bot"}
    )
    [sft] = rows(tmp_path / "ds", "sft")
    assert json.loads(sft["messages"][-1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert m["rejections"] == {"correction_not_a_tool_call": 1}
