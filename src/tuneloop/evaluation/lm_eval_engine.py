"""lm-evaluation-harness over our own engine: the `tuneloop` model of `lm_eval`.

`EngineLM` answers the harness's three requests with `tuneloop.engine.LLMEngine`, all of a call's
requests submitted at once so the engine batches them (continuous batching):
- `loglikelihood`: the continuation's log-probability from the engine's prompt logprobs of
  context + continuation (`SamplingParams.prompt_logprobs=1`: each prompt token's logprob and the
  top-1, so "is greedy" is known too);
- `loglikelihood_rolling`: the same over the harness's disjoint rolling windows;
- `generate_until`: greedy (or sampled, when the task asks) generation, cut at the first stop string
  (the engine speaks token ids, so the text is checked here after each step, and a stopped request
  is aborted at once).

Tokenization mirrors the harness's `hf` model (`lm_eval.models.huggingface.HFLM`) so both give the
same scores on the same folder (tests/evaluation/test_lm_eval_engine.py, benchmarks/lm_eval_tasks.py).
A LoRA adapter folder is evaluated on its base with the adapter loaded into the engine, as served.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from tuneloop.engine import Generation, LLMEngine, SamplingParams
from tuneloop.errors import TuneloopError
from tuneloop.models.formats import folder_format, require_complete
from tuneloop.models.loading import load_tokenizer, pick_device
from tuneloop.models.resolve import resolve_model

log = logging.getLogger("tuneloop.evaluation")

ADAPTER_NAME = "candidate"  # the engine's name for the one adapter an EngineLM evaluates
DEFAULT_MAX_GEN_TOKS = 256  # as the harness's models


def load_engine(ref: str, device: str = "auto", **engine_kwargs: Any) -> tuple[LLMEngine, Any, str | None]:
    """An engine for any model reference: (engine, tokenizer, adapter name or None).

    An adapter folder runs on its base (adapter_config.json's base_model_name_or_path, resolved like
    any reference) with the adapter loaded, so the scores are those of the model as it is served.
    """
    resolved = resolve_model(str(ref))
    kwargs = {"device": pick_device(device), **engine_kwargs}
    if folder_format(resolved.path) != "adapter":
        require_complete(resolved.path, str(ref))
        return LLMEngine.from_pretrained(resolved.path, **kwargs), load_tokenizer(resolved.path), None
    adapter = resolved.path
    require_complete(adapter, str(ref))
    base, config = adapter_base(adapter)
    # the adapter's rank must fit a slot where slots have a fixed rank (GPU, lora_in_graph)
    kwargs.setdefault("max_lora_rank", max(int(config.get("r", 16)), 16))
    engine = LLMEngine.from_pretrained(base, **kwargs)
    try:
        engine.load_lora(ADAPTER_NAME, adapter)
    except ValueError as e:  # a base the engine runs through transformers, DoRA, ...
        raise TuneloopError(
            f"the engine cannot run adapter '{ref}': {e}",
            hint="merge it first (tuneloop export --merge), or evaluate with backend='hf'",
        ) from None
    # a run folder saves the tokenizer next to the adapter (it may add tokens); else the base's
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    return engine, load_tokenizer(tok_dir), ADAPTER_NAME


def adapter_base(adapter: Path) -> tuple[Path, dict[str, Any]]:
    """An adapter folder's base model folder (adapter_config.json's base_model_name_or_path, resolved
    like any reference, so a run folder evaluates as-is) and the adapter's config."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TuneloopError(f"{path} cannot be read: {e}", hint="is it a PEFT adapter folder?") from None
    base_ref = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base_ref:
        raise TuneloopError(
            f"adapter '{adapter}' does not say its base model",
            hint="adapter_config.json needs base_model_name_or_path",
        )
    base = resolve_model(str(base_ref))
    require_complete(base.path, str(base_ref))
    return base.path, config


@register_model("tuneloop")
class EngineLM(TemplateLM):
    """The harness model `tuneloop` once this module is imported:
    `lm_eval.simple_evaluate(model="tuneloop", model_args="pretrained=REF", tasks=[...])`."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        engine: LLMEngine | None = None,
        tokenizer: Any = None,
        lora: str | None = None,
        device: str | None = "auto",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        kv_cache_gib: float | None = None,
        batch_size: Any = None,  # the harness passes these; the engine batches on its own
        max_batch_size: Any = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if engine is None:
            if not pretrained:
                raise TuneloopError("EngineLM needs a model reference (pretrained=...) or an engine")
            extra = {"kv_cache_gib": float(kv_cache_gib)} if kv_cache_gib else {}
            engine, tokenizer, lora = load_engine(pretrained, device or "auto", **extra)
        elif tokenizer is None:
            tokenizer = load_tokenizer(Path(engine.config.model))
        self.engine, self.tokenizer, self.lora = engine, tokenizer, lora
        self.pretrained = str(pretrained or engine.config.model)
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = engine.runner.max_model_len

    # ------------------------------------------------------------ what the harness asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # as HFLM: an empty context is conditioned on BOS where the tokenizer has one, else EOS
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.pretrained)).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """As HFLM: the tokenizer's default special tokens, none when the text already starts with BOS."""
        if add_special_tokens is None:
            bos = self.tokenizer.decode([self.prefix_token_id])
            add_special_tokens = None if not (bos and string.startswith(bos)) else False
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **kw)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.pretrained, "backend": "tuneloop-engine", "adapter": self.lora}

    # ------------------------------------------------------------ loglikelihood

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **_: Any,
    ) -> list[tuple[float, bool]]:
        prompts, lengths = [], []
        for _key, context, continuation in requests:
            if not continuation:
                raise TuneloopError("a loglikelihood request has an empty continuation (nothing to score)")
            # the last max_length - 1 tokens: the engine needs one position free for the token it samples
            whole = (context + continuation)[-(self.max_length - 1) :]
            if len(continuation) >= len(whole):
                raise TuneloopError(
                    f"a continuation of {len(continuation)} tokens does not fit the model's context "
                    f"({self.max_length} tokens)"
                )
            prompts.append(whole)
            lengths.append(len(continuation))
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)
        outputs = self._generate(prompts, [params] * len(prompts), disable_tqdm, "loglikelihood")
        results = []
        for (key, _, _), prompt, n, out in zip(requests, prompts, lengths, outputs, strict=True):
            logprob, greedy = 0.0, True
            for token, entry in zip(prompt[-n:], (out.prompt_logprobs or [])[-n:], strict=True):
                logprob += entry[token]  # entry: {this token: logprob, top-1 token: logprob}
                greedy = greedy and entry[token] >= max(entry.values())
            results.append((logprob, greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, (logprob, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                # a window is max_seq_len + 1 tokens, and a prompt leaves one position for the sampled token
                max_seq_len=self.max_length - 2,
                context_len=1,
            )
            for context, continuation in map(lm_utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(
            owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True
        ):
            totals[owner] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ------------------------------------------------------------ generation

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode([self.eot_token_id])
        prompts, params, stops = [], [], []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if max_gen >= self.max_length:
                raise TuneloopError(
                    f"the task asks for {max_gen} new tokens; the model's context is {self.max_length}"
                )
            ids = self.tok_encode(context)[-(self.max_length - max_gen) :] or [self.prefix_token_id]
            prompts.append(ids)
            params.append(_sampling(kwargs, max_gen))
            stops.append([s for s in until if s])
        outputs = self._generate(prompts, params, disable_tqdm, "generate_until", stops)
        texts = []
        for (context, gen_kwargs), out in zip((r.args for r in requests), outputs, strict=True):
            texts.append(out)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out)
        return texts

    # ------------------------------------------------------------ the engine loop

    def _generate(
        self,
        prompts: list[list[int]],
        params: list[SamplingParams],
        disable_tqdm: bool,
        what: str,
        stops: list[list[str]] | None = None,
    ) -> list[Any]:
        """Run every prompt through the engine at once; with `stops`, texts cut at the first stop string.

        Without stops the engine's outputs are returned (loglikelihood needs their prompt logprobs);
        with them, the decoded text of each, the request aborted as soon as a stop string shows.
        """
        engine = self.engine
        ids = [
            engine.add_request(p, sp, lora=self.lora).request_id
            for p, sp in zip(prompts, params, strict=True)
        ]
        index = {rid: i for i, rid in enumerate(ids)}
        results: list[Any] = [None] * len(ids)
        so_far = {rid: Generation(rid) for rid in ids}  # outputs carry each step's new tokens only
        errors: list[str] = []
        bar = tqdm(total=len(ids), desc=f"tuneloop engine: {what}", disable=disable_tqdm)
        try:
            while bar.n < len(ids):
                for out in engine.step():
                    i = index.get(out.request_id)
                    if i is None or results[i] is not None:
                        continue
                    whole = so_far[out.request_id].add(out)
                    if out.finish_reason == "error":  # the engine failed this request alone
                        errors.append(out.error or "unknown error")
                    if stops is None:
                        if out.finished:
                            results[i] = whole
                            bar.update(1)
                        continue
                    text = self.tok_decode(whole.token_ids)
                    cut = _cut_at_stop(text, stops[i])
                    if cut is not None or out.finished:
                        if not out.finished:
                            engine.abort(out.request_id)
                        results[i] = text if cut is None else cut
                        bar.update(1)
        except BaseException:
            for rid in ids:  # leave the engine clean for the next call (a KeyboardInterrupt, a failure)
                engine.abort(rid)
            raise
        finally:
            bar.close()
        if errors:
            raise TuneloopError(f"the engine failed {len(errors)} {what} request(s): {errors[0]}")
        return results


def _cut_at_stop(text: str, stops: list[str]) -> str | None:
    """The text before the earliest stop string, or None when none occurs (as the harness's split)."""
    positions = [p for p in (text.find(s) for s in stops) if p >= 0]
    return text[: min(positions)] if positions else None


def _sampling(kwargs: dict[str, Any], max_tokens: int) -> SamplingParams:
    """The task's generation settings as engine parameters: greedy unless the task samples."""
    temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
    top_p = float(kwargs.get("top_p") or 1.0)
    top_k = int(kwargs.get("top_k") or 0)
    seed = kwargs.get("seed")
    if temperature and not math.isfinite(temperature):
        raise TuneloopError(f"the task's temperature {temperature} is not a number")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=int(seed) if seed is not None else None,
    )
