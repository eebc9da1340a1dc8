"""Guided decoding (structured outputs) and logit_bias in the engine.

A tiny random Llama over the default model's tokenizer: its output is arbitrary, so the grammar is
all that makes it JSON. Every guided output that finishes by "stop" must parse and validate
(`jsonschema`); seeded sampling is batch-independent, so the same requests must give the same tokens
alone, beside unguided rows, under preemption and with async scheduling.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.grammar import GrammarCompiler, fill_masks
from tuneloop.engine.guided import GuidedDecoding
from tuneloop.engine.process import EngineProcess

SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "integer"}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "address"],
    },
    "enums": {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad"]}, "level": {"enum": [1, 2, 3]}},
        "required": ["mood", "level"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 6},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
    },
    "bounded_numbers": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "p": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["age", "p"],
    },
    "required_fields": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ok": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 8},
        },
        "required": ["id", "ok"],
        "additionalProperties": False,
    },
}
OTHERS = {  # spec, and the check a stopped output must pass
    "json_object": (GuidedDecoding(json_object=True), lambda text: isinstance(json.loads(text), dict)),
    "regex": (
        GuidedDecoding(regex=r"[0-9]{3}-[a-z]{2,4}"),
        lambda text: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text),
    ),
    "choice": (
        GuidedDecoding(choice=("red", "green", "blue")),
        lambda text: text in ("red", "green", "blue"),
    ),
    "grammar": (
        GuidedDecoding(grammar='root ::= "yes" | "no" | "maybe"'),
        lambda text: text in ("yes", "no", "maybe"),
    ),
}
SEEDS = (1, 2, 3)


def engine(folder, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("kv_cache_gib", 0.01)
    return LLMEngine.from_pretrained(folder, **kw)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = (5, 23, 9, 40, 14)
    return [torch.randint(5, 40000, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


def json_params(kind: str, seed: int, max_tokens: int = 64) -> SamplingParams:
    spec = GuidedDecoding(json_schema=json.dumps(SCHEMAS[kind]), name=kind)
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, guided=spec)


def workload() -> tuple[list[str], list[SamplingParams]]:
    """Every guided kind with a few seeds, and unguided seeded rows between them."""
    names, params = [], []
    for kind in SCHEMAS:
        for s in SEEDS:
            names.append(kind)
            params.append(json_params(kind, s))
            names.append("unguided")
            params.append(SamplingParams(max_tokens=20, temperature=1.0, seed=s, ignore_eos=True))
    for kind, (spec, _) in OTHERS.items():
        for s in SEEDS:
            names.append(kind)
            params.append(SamplingParams(max_tokens=32, temperature=1.0, seed=s, guided=spec))
    return names, params


@pytest.fixture(scope="module")
def tokenizer(smollm2_vocab_llama) -> Tokenizer:
    return Tokenizer.from_file(str(smollm2_vocab_llama / "tokenizer.json"))


def check_outputs(names, outs, tokenizer) -> dict[str, int]:
    """Every guided output finished by stop parses and validates; returns how many stopped, per kind."""
    stopped: dict[str, int] = {}
    for name, out in zip(names, outs, strict=True):
        if name == "unguided":
            continue
        assert out.finish_reason in ("stop", "length"), (name, out.finish_reason)
        if out.finish_reason != "stop":
            continue
        text = tokenizer.decode(out.token_ids)  # the EOS it may end with is a special token, skipped
        if name in SCHEMAS:
            jsonschema.validate(json.loads(text), SCHEMAS[name])
        else:
            assert OTHERS[name][1](text), (name, text)
        stopped[name] = stopped.get(name, 0) + 1
    return stopped


@pytest.fixture(scope="module")
def reference(smollm2_vocab_llama, tokenizer):
    """The workload on a roomy engine with chunked prefill: what every other setting must reproduce."""
    names, params = workload()
    ps = prompts(len(params), seed=1)
    eng = engine(smollm2_vocab_llama, kv_cache_gib=0.05, max_num_batched_tokens=32)
    outs = eng.generate(ps, params)
    return names, params, ps, outs


def test_guided_outputs_that_stop_parse_and_validate_beside_unguided_rows(reference, tokenizer):
    names, _, _, outs = reference
    stopped = check_outputs(names, outs, tokenizer)
    # random weights: most outputs still end (the grammars bound them); every kind must show it works
    assert set(stopped) == set(SCHEMAS) | set(OTHERS), stopped
    assert sum(stopped.values()) >= 0.7 * (len(names) - names.count("unguided"))


def test_unguided_rows_are_untouched_by_guided_neighbours(smollm2_vocab_llama, reference):
    names, params, ps, outs = reference
    rows = [k for k, n in enumerate(names) if n == "unguided"]
    alone = engine(smollm2_vocab_llama).generate([ps[k] for k in rows], [params[k] for k in rows])
    assert [o.token_ids for o in alone] == [outs[k].token_ids for k in rows]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_preemption_and_async_scheduling_give_the_same_guided_tokens(
    smollm2_vocab_llama, reference, async_scheduling
):
    _, params, ps, outs = reference
    # 40 blocks of 4 tokens (256 bytes a token): far less than the workload needs at once
    small = engine(smollm2_vocab_llama, kv_cache_gib=40 * 4 * 256 / 2**30, async_scheduling=async_scheduling)
    again = small.generate(ps, params)
    assert small.stats().preemptions > 0
    assert [(o.token_ids, o.finish_reason) for o in again] == [(o.token_ids, o.finish_reason) for o in outs]
    assert small.blocks.usage == 0


def test_async_scheduling_resumes_once_the_guided_requests_end(smollm2_vocab_llama, tokenizer):
    eng = engine(smollm2_vocab_llama, async_scheduling=True, kv_cache_gib=0.05)
    long = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    outs = eng.generate(prompts(2, seed=3), [json_params("enums", 1, max_tokens=30), long])
    assert outs[0].finish_reason == "stop"  # enums: a short object, always complete within 30 tokens
    jsonschema.validate(json.loads(tokenizer.decode(outs[0].token_ids)), SCHEMAS["enums"])
    assert eng.stats().async_steps > 0  # the unguided request's later steps overlapped


def test_a_cut_off_output_finishes_with_length(smollm2_vocab_llama, tokenizer):
    out = engine(smollm2_vocab_llama).generate(prompts(1), json_params("nested_objects", 1, max_tokens=3))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3
    assert tokenizer.decode(out.token_ids).startswith('{"name"')
    with pytest.raises(ValueError):
        json.loads(tokenizer.decode(out.token_ids))


def test_eos_is_allowed_only_where_the_grammar_can_end(smollm2_vocab_llama, tokenizer):
    compiler = GrammarCompiler(smollm2_vocab_llama, 49152, {2})
    guide = compiler.start(GuidedDecoding(json_schema=json.dumps(SCHEMAS["enums"])))
    eos_allowed = lambda: bool(fill_masks([guide], 49152)[0, 0] >> 2 & 1)  # noqa: E731 (token 2's bit)
    assert not eos_allowed()
    tokens = tokenizer.encode('{"mood": "sad", "level": 3', add_special_tokens=False).ids
    assert all(guide.accept(t) for t in tokens) and not guide.done and not eos_allowed()
    assert guide.accept(tokenizer.token_to_id("}")) and guide.done  # complete: only the end may follow
    assert eos_allowed()


def test_compiled_grammars_are_cached_by_spec(smollm2_vocab_llama):
    eng = engine(smollm2_vocab_llama)
    schema = json.dumps(SCHEMAS["enums"])
    for name in ("a", "b"):  # the name is for errors only: the same grammar
        eng.add_request([5, 6], SamplingParams(guided=GuidedDecoding(json_schema=schema, name=name)))
    assert eng.grammars.compiles == 1
    eng.add_request(
        [5, 6], SamplingParams(guided=GuidedDecoding(json_schema=schema, compact_whitespace=False))
    )
    assert eng.grammars.compiles == 2
    small = GrammarCompiler(smollm2_vocab_llama, 49152, {2}, cache_size=2)
    for choice in ("a", "b", "c", "a"):
        small.start(GuidedDecoding(choice=(choice,)))
    assert small.compiles == 4 and len(small._templates) == 2  # "a" was evicted, compiled again


def test_a_schema_that_cannot_compile_is_a_value_error_and_the_engine_goes_on(smollm2_vocab_llama, tokenizer):
    eng = engine(smollm2_vocab_llama)
    bad = {"type": "object", "properties": {"code": {"type": "string", "pattern": "(unclosed"}}}
    spec = GuidedDecoding(json_schema=json.dumps(bad), name="ticket")
    with pytest.raises(
        ValueError,
        match=r"guided json_schema 'ticket' cannot be compiled at /properties/code/pattern: .*unclosed group",
    ):
        eng.add_request([5, 6], SamplingParams(guided=spec))
    with pytest.raises(ValueError, match=r"at /properties/a/format: Unknown format: weird"):
        eng.add_request([5, 6], SamplingParams(guided=GuidedDecoding(json_schema=json.dumps(
            {"type": "object", "properties": {"a": {"type": "string", "format": "weird"}}}))))  # fmt: skip
    with pytest.raises(ValueError, match=r"guided regex cannot be compiled: .*unclosed character class"):
        eng.add_request([5, 6], SamplingParams(guided=GuidedDecoding(regex="[a-")))
    with pytest.raises(ValueError, match=r"guided grammar cannot be compiled: .*GBNF"):
        eng.add_request([5, 6], SamplingParams(guided=GuidedDecoding(grammar='root ::= "yes | ')))
    assert not eng.sequences and not eng.has_unfinished()
    out = eng.generate([[5, 6]], json_params("enums", 1))[0]
    jsonschema.validate(json.loads(tokenizer.decode(out.token_ids)), SCHEMAS["enums"])


def test_a_model_folder_without_tokenizer_json_refuses_guided_requests(tiny_gpt2):
    eng = engine(tiny_gpt2)
    with pytest.raises(ValueError, match=r"guided decoding needs the model's tokenizer.json"):
        eng.add_request([5, 6], SamplingParams(guided=GuidedDecoding(choice=("a",))))
    assert eng.generate([[5, 6]], SamplingParams(max_tokens=2))[0].finish_reason == "length"


def test_the_transformers_fallback_runner_is_guided_too(smollm2_vocab_gpt2, tokenizer):
    eng = engine(smollm2_vocab_gpt2)
    assert type(eng.runner).__name__ == "HFRunner"
    outs = eng.generate(prompts(3), [json_params("enums", s) for s in SEEDS])
    for out in outs:
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(tokenizer.decode(out.token_ids)), SCHEMAS["enums"])


def test_guided_requests_through_the_engine_process(smollm2_vocab_llama, tokenizer):
    proc = EngineProcess(smollm2_vocab_llama, block_size=4, kv_cache_gib=0.01)
    try:

        async def main():
            bad = GuidedDecoding(json_schema=json.dumps({"type": "nope"}))
            with pytest.raises(ValueError, match=r"cannot be compiled at /type: Invalid type: nope"):
                await proc.submit([5, 6], SamplingParams(guided=bad))
            return await asyncio.gather(*(proc.generate(p, json_params("enums", 1)) for p in prompts(2)))

        for out in asyncio.run(main()):
            assert out.finish_reason == "stop"
            jsonschema.validate(json.loads(tokenizer.decode(out.token_ids)), SCHEMAS["enums"])
    finally:
        proc.shutdown()


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_logit_bias_bans_and_forces_tokens(smollm2_vocab_llama, async_scheduling):
    eng = engine(smollm2_vocab_llama, async_scheduling=async_scheduling)
    p = prompts(1, seed=9)[0]
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    plain = eng.generate([p], greedy)[0].token_ids
    banned = eng.generate([p], SamplingParams(**{**vars(greedy), "logit_bias": {plain[0]: -100}}))[
        0
    ].token_ids
    assert banned[0] != plain[0] and plain[0] not in banned
    for temperature in (0, 1.0):
        forced = SamplingParams(
            max_tokens=6, temperature=temperature, seed=3, ignore_eos=True, logit_bias={777: 100}
        )
        outs = eng.generate([p, p], [forced, greedy])  # the bias is its own row's only
        assert outs[0].token_ids == [777] * 6 and outs[1].token_ids == plain


def test_logit_bias_cannot_push_a_token_past_the_grammar(smollm2_vocab_llama, tokenizer):
    spec = GuidedDecoding(choice=("red", "green"))
    bias = {tokenizer.token_to_id("blue"): 100.0}
    out = engine(smollm2_vocab_llama).generate(
        [[5, 6]], SamplingParams(max_tokens=8, temperature=0, logit_bias=bias, guided=spec)
    )[0]
    assert out.finish_reason == "stop" and tokenizer.decode(out.token_ids) in ("red", "green")
