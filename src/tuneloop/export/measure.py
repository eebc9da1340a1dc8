"""What the export report measures, the same way before and after: size, load, latency, quality.

- size: bytes of the weight files (an adapter counts its base too: that is what must be shipped).
- load: seconds to get a ready model from the folder (the faster of two loads in this process,
  so one-off import costs do not count; warm file cache).
- latency: batch 1, a fixed prompt set, greedy, a fixed number of new tokens (EOS ignored so
  every model makes the same work); time to first token and mean time per later token, each the
  median over prompts x repeats after one warm-up. The greedy tokens of each prompt are kept, so
  the report can say whether the export answers exactly as the source does.
- quality: perplexity (assistant tokens of SFT rows, or all tokens of text rows) and, for SFT
  rows, the greedy answers scored against the references (contains_answer when rows carry an
  answer, else token F1) — the same greedy loop as the latency, so ONNX is scored like PyTorch.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.evaluation import metrics
from tuneloop.evaluation.generate import prompt_and_reference
from tuneloop.evaluation.perplexity import perplexity, render_chat, sft_token_labels, text_labels
from tuneloop.evaluation.rows import Row, read_rows
from tuneloop.export import prune as pruning
from tuneloop.export.runners import greedy, runner_for
from tuneloop.models.formats import folder_format
from tuneloop.models.load import CausalLM, load_folder
from tuneloop.models.resolve import resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".data", ".pt", ".gguf")
MAX_LENGTH = 1024

# Built-in perplexity text when no --eval-data is given: plain, varied English prose.
BUILTIN_TEXT = [
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun "
    "evaporates water from the sea; the vapour rises, cools and condenses into clouds, and the "
    "clouds return the water as rain or snow that flows back to the sea through rivers.",
    "A good recipe lists its ingredients in the order they are used. Preheat the oven, mix the "
    "dry ingredients in one bowl and the wet ones in another, then fold them together gently.",
    "In 1969 two astronauts walked on the Moon while a third orbited above them. The mission "
    "took eight days, and the samples they brought back are still studied today.",
    "To reset a forgotten password, open the sign-in page, choose 'Forgot password' and follow "
    "the link sent to your email address. The link expires after thirty minutes.",
    "Photosynthesis lets plants turn light, water and carbon dioxide into sugar and oxygen. It "
    "happens mostly in the leaves, inside small structures called chloroplasts.",
    "The library opens at nine in the morning and closes at six in the evening from Monday to "
    "Friday. On Saturdays it closes at noon, and it is closed on Sundays and public holidays.",
]
PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short list of three tips for learning a new language.",
    "How do I reset my router to factory settings?",
]


@dataclass
class Measurement:
    format: str
    size_bytes: int
    load_s: float
    ttft_s: float
    per_token_s: float
    perplexity: float
    scored_tokens: int
    task: dict[str, float] = field(default_factory=dict)
    task_score: float | None = None
    sparsity: float | None = None
    device: str = "cpu"
    greedy_tokens: list[list[int]] = field(default_factory=list)  # per PROMPTS entry, EOS ignored

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.per_token_s if self.per_token_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


@dataclass
class Workload:
    """The fixed inputs every measurement in one export uses."""

    rows: list[Row] | None = None  # SFT or text rows from --eval-data; None: BUILTIN_TEXT
    kind: str = "text"
    max_samples: int = 32
    max_new_tokens: int = 48
    latency_tokens: int = 32
    repeats: int = 3
    load_tries: int = 2

    @classmethod
    def from_file(cls, data: Path | None, **kwargs: int) -> Workload:
        if data is None:
            return cls(**kwargs)
        rows, kind = read_rows(data)
        return cls(rows[: kwargs.get("max_samples", 32)], kind, **kwargs)


def weights_size(path: Path) -> int:
    """Bytes of weight files in the folder; an adapter adds its base model's."""
    path = Path(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    if folder_format(path) == "adapter":
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        size += weights_size(resolve_model(base).path)
    return size


def measure(path: Path, device: str, work: Workload, *, with_sparsity: bool = False) -> Measurement:
    """Load the folder and measure everything; the model is freed before returning."""
    model, tokenizer, load_s = timed_load(path, device, work.load_tries)
    try:
        sparsity = _sparsity(model) if with_sparsity else None
        ttft, per_token, answers = _latency(model, tokenizer, work)
        ppl = perplexity(model, _ppl_examples(tokenizer, work), batch_size=4)
        task = task_scores(model, tokenizer, work) if work.kind == "sft" and work.rows else {}
    finally:
        del model
        gc.collect()
    score = task.get("contains_answer", task.get("token_f1")) if task else None
    return Measurement(
        folder_format(path),
        weights_size(path),
        load_s,
        ttft,
        per_token,
        ppl.perplexity,
        ppl.tokens,
        task,
        score,
        sparsity,
        device,
        answers,
    )


def _sparsity(model: CausalLM) -> float | None:
    try:
        return pruning.linear_sparsity(model)
    except Exception:  # ONNX sessions and packed/quantized weights have no countable zeros
        return None


def timed_load(path: Path, device: str, tries: int = 2) -> tuple[CausalLM, PreTrainedTokenizerBase, float]:
    """Load `tries` times and keep the fastest: the first load in a process also pays for
    importing model code and kernels, which a serving process pays once, not per model."""
    best, loaded = float("inf"), None
    for _ in range(tries):
        loaded = None  # free the previous copy before loading the next
        gc.collect()
        t = time.perf_counter()
        loaded = load_folder(path, device)
        if loaded.format == "hf" and device.startswith("cuda") and pruning.pattern_of(path) == "2:4":
            pruning.to_semi_structured(loaded.model)  # sparse tensor cores; the file holds dense 2:4 weights
        best = min(best, time.perf_counter() - t)
    assert loaded is not None
    return loaded.model, loaded.tokenizer, best


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer(render_chat(tokenizer, messages, True), add_special_tokens=False)["input_ids"]
    return tokenizer(messages[-1]["content"])["input_ids"]


def latency(model: CausalLM, tokenizer: PreTrainedTokenizerBase, work: Workload) -> tuple[float, float]:
    """(median time to first token, median per-token time) over prompts x repeats, batch 1."""
    ttft, per_token, _ = _latency(model, tokenizer, work)
    return ttft, per_token


def _latency(
    model: CausalLM, tokenizer: PreTrainedTokenizerBase, work: Workload
) -> tuple[float, float, list[list[int]]]:
    """`latency`, plus the greedy tokens of each prompt (the first repeat's; greedy repeats agree)."""
    runner = runner_for(model)
    prompts = [_chat_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    greedy(runner, prompts[0], 4)  # warm-up: lazy init, allocator, ORT graph caches
    ttfts, steps, answers = [], [], []
    for ids in prompts:
        for i in range(work.repeats):
            gen = greedy(runner, ids, work.latency_tokens)
            ttfts.append(gen.ttft_s)
            steps.append(statistics.fmean(gen.step_s) if gen.step_s else 0.0)
            answers += [gen.tokens] if i == 0 else []
    return statistics.median(ttfts), statistics.median(steps), answers


def _ppl_examples(tokenizer: PreTrainedTokenizerBase, work: Workload) -> list[tuple[list[int], list[int]]]:
    if work.rows is None:
        return [text_labels(tokenizer, text, MAX_LENGTH) for text in BUILTIN_TEXT]
    if work.kind == "text":
        return [text_labels(tokenizer, row.text or "", MAX_LENGTH) for row in work.rows]
    out = []
    for row in work.rows:
        ids, labels = sft_token_labels(tokenizer, row.messages or [], tools=row.tools)
        out.append((ids[:MAX_LENGTH], labels[:MAX_LENGTH]))
    return out


def task_scores(model: CausalLM, tokenizer: PreTrainedTokenizerBase, work: Workload) -> dict[str, float]:
    """Mean answer scores of greedy replies to the SFT rows (stopping at end of turn)."""
    runner = runner_for(model)
    eos = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    per_row = []
    for row in work.rows or []:
        prompt, reference = prompt_and_reference(row.messages or [])
        gen = greedy(runner, _chat_ids(tokenizer, prompt), work.max_new_tokens, eos)
        reply = tokenizer.decode(gen.tokens, skip_special_tokens=True).strip()
        per_row.append(metrics.score(reply, reference, row.meta.get("answer")))
    return metrics.mean_scores(per_row)
