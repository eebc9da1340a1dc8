"""The tool-calling benchmark's data: every expected call of the suite is valid for its tool's schema,
and the synthetic training rows are valid tool rows that share no request or value with the suite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from tuneloop.evaluation.rows import check_row

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SUITE = json.loads((BENCH / "data" / "tool_calling_suite.json").read_text())


def _data_module():
    spec = importlib.util.spec_from_file_location("tool_calling_data", BENCH / "tool_calling_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_has_fifty_calls_over_three_tools_and_some_without():
    functions = [c["expected_function"] for c in SUITE["cases"]]
    assert len(functions) >= 50 and len({c["id"] for c in SUITE["cases"]}) == len(functions)
    assert {f for f in functions if f} == {"get_weather", "search_products", "create_ticket"}
    assert 5 <= functions.count(None) < len(functions) / 4


@pytest.mark.parametrize("case", [c for c in SUITE["cases"] if c["expected_function"]], ids=lambda c: c["id"])
def test_each_expected_call_matches_its_tool_schema(case):
    tool = next(t for t in SUITE["tools"] if t["function"]["name"] == case["expected_function"])
    jsonschema.validate(case["expected_arguments"], tool["function"]["parameters"])


def test_synthetic_rows_are_valid_tool_rows_disjoint_from_the_suite():
    data = _data_module()
    rows = data.generate(120, seed=1)
    for i, row in enumerate(rows, 1):
        check_row(row, "synthetic.jsonl", i, kinds=("sft",))
        calls = row["messages"][-1].get("tool_calls") or []
        for call in calls:
            tool = next(t for t in SUITE["tools"] if t["function"]["name"] == call["function"]["name"])
            jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    assert sum(1 for r in rows if not r["messages"][-1].get("tool_calls")) == 20  # one chat row in six
    suite_requests = {c["request"] for c in SUITE["cases"]}
    assert not suite_requests & {r["messages"][0]["content"] for r in rows}


def test_an_overlap_with_the_suite_is_refused():
    data = _data_module()
    row = data.call_row("What's the weather like in Paris?", "get_weather", {"city": "Paris"})
    with pytest.raises(SystemExit, match="overlaps the benchmark suite"):
        data.check_disjoint([row])
