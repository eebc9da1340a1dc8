"""The lm-evaluation-harness model over our engine, checked against plain transformers (the oracle)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.lm_eval_engine import EngineLM
from tuneloop.models.loading import load_tokenizer

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("问题：中国的首都是哪座城市？\n答案：", "北京"),
    ("The quick brown fox", " jumps over the lazy dog"),
    ("", "Hello world"),  # empty context: conditioned on BOS, as the harness's hf model does
]


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return EngineLM(str(tiny_llama), device="cpu", kv_cache_gib=0.05)


@pytest.fixture(scope="module")
def hf(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _reference(model, ids: list[int], n: int) -> tuple[float, bool]:
    """Log-probability of the last n tokens of `ids` given the rest, and whether each is the argmax."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
    targets = torch.tensor(ids[1:])
    picked = logprobs[torch.arange(len(targets)), targets][-n:]
    greedy = bool((logprobs.argmax(-1)[-n:] == targets[-n:]).all())
    return float(picked.sum()), greedy


def test_loglikelihood_equals_a_transformers_forward_pass(lm, hf, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    got = lm.loglikelihood(_instances("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got, strict=True):
        if context:
            whole, ctx = tok.encode(context + continuation), tok.encode(context)
            ids, n = whole, len(whole) - len(ctx)
        else:
            ids = [tok.bos_token_id, *tok.encode(continuation)]
            n = len(ids) - 1
        want, want_greedy = _reference(hf, ids, n)
        assert logprob == pytest.approx(want, abs=1e-4), (context, continuation)
        assert greedy == want_greedy
        assert logprob < 0


def test_is_greedy_exactly_when_every_continuation_token_is_the_argmax(lm, hf, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    ids = tok.encode("Once upon a time")
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
    greedy = out[0, len(ids) :].tolist()
    other = [*greedy[:2], (greedy[2] + 1) % len(tok), greedy[3]]  # one token that is not the argmax
    # token ids straight to the scorer: a random model's bytes need not survive decode + encode
    got = lm._loglikelihood_tokens([(None, ids, greedy), (None, ids, other)])
    assert [g for _, g in got] == [True, False]
    assert got[0][0] == pytest.approx(_reference(hf, ids + greedy, 4)[0], abs=1e-4)


def test_loglikelihood_rolling_sums_every_token_given_the_prefix(lm, hf, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    text = "A short document to score, token by token, from its first token on."
    [got] = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    ids = [tok.bos_token_id, *tok.encode(text)]
    want, _ = _reference(hf, ids, len(ids) - 1)
    assert got == pytest.approx(want, abs=1e-4)


def test_loglikelihood_rolling_splits_a_text_longer_than_the_context(lm, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    text = " ".join(f"word{i}" for i in range(400))  # well over the tiny model's 512 positions
    assert len(tok.encode(text)) > lm.max_length
    [got] = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    assert got < 0 and got == got  # a finite sum over every window (not NaN)


def _greedy_text(hf, tok, prompt: str, max_new: int) -> str:
    ids = tok.encode(prompt)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_generate_until_is_greedy_and_stops_at_max_gen_toks(lm, hf, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    prompts = ["Question: name a colour.\nAnswer:", "你好，", "1 2 3"]
    got = lm.generate_until(
        _instances("generate_until", [(p, {"until": [], "max_gen_toks": 12}) for p in prompts])
    )
    assert got == [_greedy_text(hf, tok, p, 12) for p in prompts]
    longer = lm.generate_until(
        _instances("generate_until", [(p, {"until": [], "max_gen_toks": 24}) for p in prompts])
    )
    for short, long in zip(got, longer, strict=True):  # 12 tokens were the limit, not the end
        assert long.startswith(short.rstrip("\ufffd")) and len(long) > len(short)


def test_generate_until_cuts_at_the_first_stop_string_and_frees_the_request(lm, hf, tiny_llama):
    tok = load_tokenizer(tiny_llama)
    prompt = "Question: name a colour.\nAnswer:"
    full = _greedy_text(hf, tok, prompt, 24)
    assert len(full) > 6
    stop_a, stop_b = full[4:6], full[2:3]  # two stop strings: the earlier occurrence wins
    cut = min(full.find(stop_a), full.find(stop_b))
    [got] = lm.generate_until(
        _instances("generate_until", [(prompt, {"until": [stop_a, stop_b], "max_gen_toks": 24})])
    )
    assert got == full[:cut]
    assert lm.engine.sequences == {}  # the stopped request was aborted, its KV blocks freed


def test_generate_until_asking_for_more_tokens_than_the_context_is_a_clear_error(lm):
    with pytest.raises(TuneloopError, match="new tokens"):
        lm.generate_until(_instances("generate_until", [("Hi", {"until": ["\n"], "max_gen_toks": 100_000})]))


def test_an_adapter_is_evaluated_on_its_base_with_the_adapter_loaded(tiny_llama, tmp_path):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, config).eval()  # random B: the adapter changes the outputs
    model.save_pretrained(tmp_path / "adapter")
    cfg = tmp_path / "adapter" / "adapter_config.json"
    assert str(tiny_llama) in cfg.read_text()  # base_model_name_or_path: where the engine finds the base

    lm = EngineLM(str(tmp_path / "adapter"), device="cpu", kv_cache_gib=0.05)
    assert lm.lora is not None
    tok = load_tokenizer(tiny_llama)
    context, continuation = PAIRS[0]
    [(got, _)] = lm.loglikelihood(_instances("loglikelihood", [(context, continuation)]))
    whole = tok.encode(context + continuation)
    n = len(whole) - len(tok.encode(context))
    want, _ = _reference(model, whole, n)
    base_only, _ = _reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), whole, n)
    assert got == pytest.approx(want, abs=1e-4)
    assert abs(want - base_only) > 1e-3  # the check would catch an adapter that was not applied


def test_the_harness_builds_the_tuneloop_model_by_name(tiny_llama):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tuneloop.evaluation.lm_eval_harness import TASKS_DIR

    out = lm_eval.simple_evaluate(
        model="tuneloop",  # registered by importing tuneloop.evaluation.lm_eval_engine
        model_args=f"pretrained={tiny_llama},kv_cache_gib=0.05",
        tasks=["tuneloop_mc_en"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=2,
    )
    assert out["results"]["tuneloop_mc_en"]["acc,none"] in (0.0, 0.5, 1.0)
    assert len(out["samples"]["tuneloop_mc_en"]) == 2
