"""`tuneloop bench engine`: output tokens/s of the engine vs transformers `generate`, in one run.

Closed loop: C clients each keep one request in flight; the first C arrive one engine step apart
(requests join a running batch, they do not start together), and a client sends its next request
as soon as the previous one finishes. Baselines on the same prompts: `generate` one request at a
time, and `generate` on static left-padded batches of 8.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tuneloop.engine import LLMEngine, SamplingParams


@dataclass
class Result:
    name: str
    requests: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 1)}


def make_prompts(tokenizer: PreTrainedTokenizerBase, n: int, questions: list[str]) -> list[list[int]]:
    out = []
    for i in range(n):
        q = questions[i % len(questions)]
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        out.append(list(ids))
    return out


def hf_one_by_one(model: PreTrainedModel, prompts: list[list[int]], new: int) -> Result:
    t = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            model.generate(
                torch.tensor([p], device=model.device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
    return Result(
        "transformers generate, one at a time", len(prompts), len(prompts) * new, time.perf_counter() - t
    )


def hf_static_batch(
    model: PreTrainedModel, prompts: list[list[int]], new: int, batch: int, pad_id: int
) -> Result:
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad_id,
            )
    return Result(
        f"transformers generate, static batches of {batch}",
        len(prompts),
        len(prompts) * new,
        time.perf_counter() - t,
    )


def engine_closed_loop(engine: LLMEngine, prompts: list[list[int]], new: int, concurrency: int) -> Result:
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    pending = list(prompts)
    in_flight = 0
    tokens = 0
    t = time.perf_counter()
    while pending or engine.has_unfinished():
        if pending and in_flight < concurrency:  # one new arrival per step until the clients are all busy
            engine.add_request(pending.pop(0), params)
            in_flight += 1
        for out in engine.step():
            tokens += len(out.new_token_ids)
            if out.finished:
                in_flight -= 1
    return Result(f"tuneloop engine, {concurrency} concurrent", len(prompts), tokens, time.perf_counter() - t)


def run(
    model_folder: str,
    *,
    new: int = 64,
    concurrency: tuple[int, ...] = (1, 8, 32),
    hf_requests: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict[str, Any]:
    questions = [
        "What is the capital of France?",
        "Explain what a router does in one sentence.",
        "Give me three tips for a strong Wi-Fi signal.",
        "What is 17 times 23?",
        "Write a haiku about the sea.",
        "How do I reset a forgotten password?",
        "What does LoRA stand for in machine learning?",
        "Name two planets with rings.",
    ]
    tok = AutoTokenizer.from_pretrained(model_folder)
    results: list[Result] = []
    # both sides on the same device: the comparison is the engine against transformers, not CPU against GPU
    hf = AutoModelForCausalLM.from_pretrained(model_folder, dtype=getattr(torch, dtype)).to(device).eval()
    hf_prompts = make_prompts(tok, hf_requests, questions)
    hf_one_by_one(hf, hf_prompts[:1], 4)  # warm-up
    results.append(hf_one_by_one(hf, hf_prompts[: max(2, hf_requests // 4)], new))
    results.append(hf_static_batch(hf, hf_prompts, new, 8, tok.pad_token_id or 0))
    del hf
    engine = LLMEngine.from_pretrained(model_folder, dtype=dtype, kv_cache_gib=1.0, device=device)
    engine.generate(make_prompts(tok, 2, questions), None)  # warm-up
    for c in concurrency:
        n = max(c * 2, 4) if c > 1 else max(2, hf_requests // 4)
        results.append(engine_closed_loop(engine, make_prompts(tok, n, questions), new, c))
    base = results[0].tokens_per_s
    return {
        "model": model_folder,
        "new_tokens": new,
        "dtype": dtype,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [
            {**r.to_dict(), "ratio_vs_one_at_a_time": round(r.tokens_per_s / base, 2)} for r in results
        ],
    }
