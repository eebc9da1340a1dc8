"""LLMEngine: the core loop. add_request -> step() -> outputs; generate() for offline batches.

One step = schedule (who, how many tokens) -> run the model over the paged cache -> sample ->
append tokens, check stop conditions, free finished sequences. Speaks token ids only.

Async scheduling (on by default on CUDA; async_scheduler.py holds its bookkeeping and policy): a
pure decode step N+1 is launched before step N's tokens are read, then N's tokens are appended
while N+1 runs, so `step()` returns the previous step's outputs.

One request never fails its neighbours. `add_request` refuses what could fail later (ValueError:
token ids outside the vocabulary, which on CUDA would be a device-side assert that ends the process;
sampling parameters out of range). What still fails inside a step fails only the requests
responsible: a step computes (run the model, sample) before it changes anything (num_computed,
prefix-cache blocks, output tokens), so a step that raises is re-run in halves, each half computed
and committed on its own, down to the rows that fail alone; those finish with finish_reason
"error", every other row gets the token it would have got. A row whose sampling raises fails alone
without a re-run (sampler.py). The re-runs are bounded (2N-1 for N rows): when the model fails for
every row (broken weights, out of memory for even one row) every request of the step fails, loudly.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.engine.async_scheduler import AsyncScheduler
from tuneloop.engine.block_manager import BlockManager
from tuneloop.engine.config import EngineConfig
from tuneloop.engine.grammar import GrammarCompiler
from tuneloop.engine.hf_runner import HFRunner
from tuneloop.engine.lora import LoRAManager
from tuneloop.engine.model_runner import ModelRunner
from tuneloop.engine.models.llama import is_native
from tuneloop.engine.outputs import Generation, RequestOutput
from tuneloop.engine.runner import OnDevice, Runner, check_servable
from tuneloop.engine.sampler import Sampled
from tuneloop.engine.sampling import SamplingParams
from tuneloop.engine.scheduler import Scheduled, Scheduler
from tuneloop.engine.sequence import Sequence

log = logging.getLogger("tuneloop.engine")


@dataclass
class _InFlight:
    """A step launched on the device whose sampled tokens the host has not read yet."""

    items: list[Scheduled]  # the rows that sampled, in the order of the tokens
    sampled: OnDevice


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_usage: float  # share of KV blocks in use
    kv_blocks: int
    prefix_cache_hit_rate: float  # prompt tokens served from the cache / prompt tokens looked up
    preemptions: int
    steps: int
    prompt_tokens: int
    generated_tokens: int
    generation_tokens_per_s: float  # over the last steps
    async_steps: int = 0  # of `steps`, those launched ahead under async scheduling (pure decode)
    max_model_len: int = 0  # the context: prompt + output tokens of one request (0: not known)
    max_num_seqs: int = 0  # sequences one step runs (the gateway admits as many at once by default)
    max_loras: int = 0  # adapters loaded at once (the gateway's adapter cache has as many slots)
    max_lora_rank: int = 0  # the largest adapter rank a slot holds (lora_in_graph); 0: any rank


class LLMEngine:
    def __init__(self, config: EngineConfig, model: Any = None):
        self.runner = make_runner(config, model)
        # the runner decided what the config left open (sizing.py): the engine runs with that
        self.config = config = self.runner.cfg
        self.blocks = BlockManager(
            self.runner.num_blocks, config.block_size, config.prefix_caching and self.runner.shares_blocks
        )
        on = config.async_scheduling
        self.async_scheduling = self.runner.reads_device_ids and (
            self.runner.device.startswith("cuda") if on is None else on
        )
        sizes = (self.blocks, config.max_num_seqs, config.max_num_batched_tokens, self.runner.max_model_len)
        self.overlap = AsyncScheduler(*sizes, config.async_max_batch) if self.async_scheduling else None
        self.scheduler: Scheduler = self.overlap or Scheduler(*sizes)
        self._inflight: _InFlight | None = None
        self._failed_rows: list[tuple[Sequence, str]] = []  # launched rows whose sampling raised
        self.eos_ids = _eos_ids(Path(config.model))
        # guided decoding (structured outputs): specs compiled at add_request, cached (grammar.py)
        self.grammars = GrammarCompiler(Path(config.model), self.runner.vocab_size, self.eos_ids)
        self.sequences: dict[str, Sequence] = {}
        self._steps = self._async_steps = self._prompt_tokens = self._generated = 0
        self._recent: list[tuple[float, int]] = []  # (time, tokens generated) of recent steps
        self.lora: LoRAManager | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs: Any) -> LLMEngine:
        return cls(EngineConfig(model=str(folder), **kwargs))

    # ------------------------------------------------------------ requests

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        lora: str | None = None,
    ) -> Sequence:
        prompt_ids, params = check_request(prompt_ids, params, self.runner.vocab_size)
        if len(prompt_ids) >= self.runner.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens exceeds max_model_len {self.runner.max_model_len}"
            )
        if lora is not None and not self.runner.serves_lora:
            raise ValueError("LoRA adapters are served on native (Llama-family) models only")
        if lora is not None and (self.lora is None or lora not in self.lora.adapters):
            raise ValueError(f"unknown LoRA adapter {lora!r}; load it first")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        if request_id is not None:
            if not isinstance(request_id, str) or not request_id:
                raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
            if request_id in self.sequences:
                raise ValueError(f"request id {request_id!r} is already in use")
        # compiled here, so a spec the library cannot compile is this caller's ValueError (a 400)
        guide = self.grammars.start(params.guided) if params.guided is not None else None
        seq = Sequence(prompt_ids, params, priority=priority, lora=lora, guide=guide)
        if request_id is not None:
            seq.request_id = request_id
        self.scheduler.add(seq)
        self.sequences[seq.request_id] = seq
        self._prompt_tokens += len(prompt_ids)
        return seq

    # ------------------------------------------------------------ adapters

    def load_lora(self, name: str, folder: str | Path) -> None:
        """Load a PEFT LoRA adapter (trained on this base) under `name`; no restart needed."""
        if self.lora is None:
            c = self.config
            self.lora = self.runner.lora = LoRAManager(
                self.runner.model, c.max_loras, c.max_lora_rank if c.lora_in_graph else None
            )
        self.lora.load(name, folder)

    def unload_lora(self, name: str) -> None:
        if self.lora is None:
            raise ValueError(f"adapter {name!r} is not loaded")
        if any(s.lora == name for s in self.sequences.values()):
            raise ValueError(f"adapter {name!r} is serving requests; unload it when they finish")
        self.lora.unload(name)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks (e.g. the client went away)."""
        seq = self.sequences.get(request_id)
        if seq is None or seq.finished:
            return False
        self.scheduler.finish(seq, "abort")  # a step in flight may still compute it: its token is dropped
        self._forget(seq)
        self._drop_stale_step()
        return True

    def _forget(self, seq: Sequence) -> None:
        self.sequences.pop(seq.request_id, None)
        seq.guide = None  # its matcher's memory goes with it
        self.runner.forget(seq.request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or self._inflight is not None

    # ------------------------------------------------------------ one step

    def step(self) -> list[RequestOutput]:
        """Outputs of one step: the previous one's under async scheduling (launched by the last call)."""
        if self.overlap is None:
            return self._step_sync()
        prev, self._inflight = self._inflight, None
        if not self.overlap.overlaps():  # learn the tokens in flight, then run this step synchronously
            return (self._resolve(prev) if prev else []) + self._step_sync()
        batch = self.scheduler.schedule()
        try:
            self._inflight = self._launch(batch) if batch else None
        except Exception as e:  # nothing of `batch` was applied: learn the tokens in flight, then isolate
            outputs = self._resolve(prev) if prev else []
            return outputs + self._isolate([item for item in batch if not item.seq.finished], e)
        outputs = self._resolve(prev) if prev else []  # while the GPU runs the step just launched
        outputs += [self._fail(seq, why) for seq, why in self._failed_rows if not seq.finished]
        self._failed_rows = []
        self._drop_stale_step()
        return outputs

    def _drop_stale_step(self) -> None:
        """Forget the step in flight when none of its rows has a token to give (the GPU still runs it):
        rows computed past a stop or an abort, or prompt chunks that sample nothing. Nothing waits."""
        if self._inflight is not None and all(item.seq.finished for item in self._inflight.items):
            self._inflight = None

    def _launch(self, batch: list[Scheduled]) -> _InFlight:
        """Queue the model and the sampling of `batch` on the device; nothing here waits for it."""
        assert self.overlap is not None
        inputs = self.runner.prepare(batch)
        sampled = self.runner.sample_on_device(self.runner.run(inputs), inputs)
        # nothing above changed a sequence: a raise there leaves the batch to be re-run (`_isolate`)
        sampling = [item for item in batch if item.samples]  # before `launched` moves num_computed
        self.overlap.launched(batch)
        # finished once the step before is read (its token is theirs); this step's token is dropped
        self._failed_rows = [(sampling[k].seq, why) for k, why in sampled.failed.items()]
        self._steps += 1
        self._async_steps += 1
        return _InFlight(sampling, sampled)

    def _resolve(self, step: _InFlight) -> list[RequestOutput]:
        """Read a launched step's tokens (the one wait of the loop) and append them to their sequences."""
        assert self.overlap is not None
        outputs = []
        for item, token in zip(step.items, step.sampled.wait(), strict=True):
            if not self.overlap.fill_placeholder(item.seq):
                continue  # stopped at the step before, or aborted: computed past its end, dropped
            outputs.append(self._append(item, token, None, None))
            self.overlap.token_appended(item.seq)
        self._generated += len(outputs)
        self._recent = [*self._recent[-63:], (time.monotonic(), len(outputs))]
        return outputs

    def _step_sync(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            return []
        try:
            computed = self._compute(batch)
        except Exception as e:
            return self._isolate(batch, e)
        return self._commit(batch, computed)

    def _compute(self, batch: list[Scheduled]) -> Sampled:
        """Prepare, run and sample, changing no sequence and no block (the K/V written are at positions
        not yet counted as computed): a batch that raises here can be run again, whole or in parts."""
        inputs = self.runner.prepare(batch)
        return self.runner.sample(self.runner.run(inputs), inputs)

    def _commit(self, batch: list[Scheduled], c: Sampled) -> list[RequestOutput]:
        """Apply a computed step: K/V counted, blocks registered, tokens appended, stops checked."""
        sampling = [item for item in batch if item.samples]  # before after_step moves num_computed
        prompt_lp = self._commit_prompt_logprobs(batch, c.prompt_logprobs or {})
        self.scheduler.after_step(batch)
        outputs = [
            self._fail(item.seq, c.failed[k])
            if k in c.failed
            else self._append(item, c.tokens[k], c.logprobs[k], prompt_lp.get(item.seq.request_id))
            for k, item in enumerate(sampling)
        ]
        made = len(sampling) - len(c.failed)
        self._steps += 1
        self._generated += made
        self._recent = [*self._recent[-63:], (time.monotonic(), made)]
        return outputs

    def _isolate(self, batch: list[Scheduled], error: Exception) -> list[RequestOutput]:
        """A step raised: find the rows that fail on their own and finish only those with the error.

        The batch is re-run in halves through `_compute`; a half that computes is committed as a step
        of its own (its rows get exactly the token the whole step would have given them), one that
        raises is halved again. At most 2N-1 runs for N rows; no row's step is applied twice."""
        log.warning(
            "a step of %d requests failed (%s: %s); re-running it in parts to find the request that fails",
            len(batch),
            type(error).__name__,
            error,
            exc_info=error,
        )
        for item in batch:
            self.runner.discard_step(item.seq.request_id)  # transformers' cache may hold half a step
        outputs: list[RequestOutput] = []
        culprits: list[tuple[Scheduled, Exception]] = [(batch[0], error)] if len(batch) == 1 else []
        groups = deque(_halves(batch) if len(batch) > 1 else [])
        while groups:
            group = [item for item in groups.popleft() if not item.seq.finished]
            if not group:
                continue
            try:
                computed = self._compute(group)
            except Exception as e:
                if len(group) == 1:
                    culprits.append((group[0], e))
                else:
                    groups.extend(_halves(group))
                continue
            outputs += self._commit(group, computed)
        if len(batch) > 1 and len(culprits) == len(batch):
            log.error(
                "every request of the step failed on its own: the model or the engine is broken "
                "(%s: %s); failing them all",
                type(error).__name__,
                error,
            )
        for item, e in culprits:
            log.error(
                "request %s failed inside the engine and was finished (%s: %s)",
                item.seq.request_id,
                type(e).__name__,
                e,
            )
            outputs.append(self._fail(item.seq, f"{type(e).__name__}: {e}"))
        return outputs

    def _fail(self, seq: Sequence, why: str) -> RequestOutput:
        """Finish one request because its own work raised; the others go on."""
        self.scheduler.finish(seq, "error")
        self._forget(seq)
        return RequestOutput(
            seq.request_id,
            [],
            True,
            "error",
            [],
            None,
            len(seq.prompt_ids),
            seq.num_cached_prompt,
            error=f"the engine failed this request: {why}",
        )

    def _append(
        self, item: Scheduled, token: int, logprob: dict[int, float] | None, prompt_lp: Any
    ) -> RequestOutput:
        seq = item.seq
        if seq.guide is not None and not seq.guide.accept(token):  # its mask allowed it: a library fault
            return self._fail(seq, f"guided decoding refused token {token}: {seq.guide.error}")
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
        seq.output_ids.append(token)
        seq.logprobs.append(logprob)
        reason = self._finish_reason(seq, token)
        if reason:
            self.scheduler.finish(seq, reason)
            self._forget(seq)
        return RequestOutput(
            seq.request_id,
            [token],
            reason is not None,
            reason,
            [logprob],
            prompt_lp,
            len(seq.prompt_ids),
            seq.num_cached_prompt,
        )

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids):
            return "stop"
        if seq.guide is not None and seq.guide.done:  # the grammar is complete: nothing else may follow
            return "stop"
        if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.runner.max_model_len:
            return "length"
        return None

    @staticmethod
    def _commit_prompt_logprobs(batch: list[Scheduled], new: dict[str, tuple[bool, list]]) -> dict[str, list]:
        """Add a step's prompt logprobs to their sequences; those whose prompt is done get the whole list."""
        out: dict[str, list] = {}
        for item in batch:
            got = new.get(item.seq.request_id)
            if got is None:
                continue
            restart, entries = got
            if restart:
                item.seq.prompt_logprobs = [None]
            item.seq.prompt_logprobs.extend(entries)
            if item.samples:
                out[item.seq.request_id] = list(item.seq.prompt_logprobs)
        return out

    # ------------------------------------------------------------ offline

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
        lora: list[str | None] | None = None,
    ) -> list[Generation]:
        """Run every prompt to completion; each request's whole output, in prompt order."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [
            self.add_request(p, sp, lora=(lora[i] if lora else None)).request_id
            for i, (p, sp) in enumerate(zip(prompts, plist, strict=True))
        ]
        done = {rid: Generation(rid) for rid in ids}
        left = len(ids)
        while left:
            for out in self.step():
                if (g := done.get(out.request_id)) is not None:
                    left -= g.add(out).finished
        return list(done.values())

    def stats(self) -> EngineStats:
        recent = self._recent
        span = recent[-1][0] - recent[0][0] if len(recent) > 1 else 0.0
        rate = sum(n for _, n in recent[1:]) / span if span > 0 else 0.0
        b = self.blocks
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_usage=b.usage,
            kv_blocks=len(b.blocks),
            prefix_cache_hit_rate=b.hits / b.queries if b.queries else 0.0,
            preemptions=self.scheduler.preemptions,
            steps=self._steps,
            prompt_tokens=self._prompt_tokens,
            generated_tokens=self._generated,
            generation_tokens_per_s=rate,
            async_steps=self._async_steps,
            max_model_len=self.runner.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            max_loras=self.config.max_loras,
            max_lora_rank=self.config.max_lora_rank if self.config.lora_in_graph else 0,
        )


def make_runner(config: EngineConfig, model: Any = None) -> Runner:
    """The native runner for Llama-family folders (or a model already built), transformers' for the rest."""
    if model is not None:
        return ModelRunner(config, model)
    check_servable(config.model)
    return ModelRunner(config) if is_native(config.model) else HFRunner(config)


def _halves(batch: list[Scheduled]) -> list[list[Scheduled]]:
    mid = len(batch) // 2
    return [batch[:mid], batch[mid:]]


def check_request(
    prompt_ids: Any, params: SamplingParams | None, vocab_size: int | None = None
) -> tuple[list[int], SamplingParams]:
    """The prompt as a list of ints (in [0, vocab_size) when it is given) and valid sampling parameters,
    or ValueError naming what is wrong. An id outside the vocabulary indexes past the embedding table,
    which on CUDA is a device-side assert that ends the whole process (every request on it), not an
    exception of this one; the parameters are checked again because a dataclass can be changed after
    it was made."""
    params = params or SamplingParams()
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
    params.validate(vocab_size)
    if isinstance(prompt_ids, (str, bytes)) or not hasattr(prompt_ids, "__iter__"):
        raise ValueError(f"prompt_ids must be a list of token ids, got {type(prompt_ids).__name__}")
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("prompt_ids must not be empty")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        bad = next(t for t in ids if not isinstance(t, int) or isinstance(t, bool))
        raise ValueError(f"prompt_ids must be integers (token ids), got {bad!r}")
    if min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
        bad = next(t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size))
        top = "" if vocab_size is None else f" (0..{vocab_size - 1})"
        raise ValueError(f"prompt has token ids outside the vocabulary{top}: {bad}")
    return ids, params


def _eos_ids(folder: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
    return ids
