"""Next-token choice for a batch whose rows each carry their own sampling parameters.

Before anything chooses, a row's `logit_bias` is added and, for a guided row (structured outputs),
every token its grammar does not allow next is set to -inf (grammar.py): on a copy of the logits,
after the model (and its CUDA graph) produced them. Greedy rows then take the argmax (without bias
or grammar, exactly `generate`'s). Other rows go through penalties -> temperature -> top-k ->
top-p -> min-p and draw from a per-request generator when the request has a seed (same seed, same
tokens, whatever else is in the batch). Logprobs are of the model's raw distribution, as OpenAI
and vLLM report them.

`on_device` is the async-scheduling variant: the chosen ids stay a device tensor and nothing waits
for the GPU. It serves rows that need no host data; penalties (they read the output so far, whose
newest token the host does not know yet), logprobs (dicts built on the host) and grammars (the mask
follows the token just sampled) take `__call__`; logit_bias works on the device.

A row whose own work raises (its generator, its penalties, its logprobs) is reported in `failed`
with the reason, and the other rows are sampled as usual: one request's failure is its own, never
its neighbours' (the engine finishes that request with the error).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tuneloop.engine.grammar import apply_masks, fill_masks
from tuneloop.engine.sampling import SamplingParams
from tuneloop.engine.scheduler import Scheduled
from tuneloop.engine.sequence import Sequence


class Sampled(NamedTuple):
    tokens: list[int]  # one per row (a failed row's entry is a placeholder, never appended)
    logprobs: list[dict[int, float] | None]
    failed: dict[int, str]  # row -> why its sampling raised
    # request id -> (starts over, new entries) for the rows computing prompt positions (`prompt_logprobs`)
    prompt_logprobs: dict[str, tuple[bool, list]] | None = None


class Sampler:
    def __init__(self, device: torch.device | str):
        self.device = device
        self.generators: dict[str, torch.Generator] = {}
        self.shared = torch.Generator(device=device)
        self.shared.seed()

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> Sampled:
        """logits: (B, V) float32, one row per sequence that samples this step."""
        raw, failed = self._constrain(logits, seqs)
        want_logprobs = any(s.params.logprobs is not None for s in seqs)
        logprobs_all = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        greedy = raw.argmax(dim=-1).tolist()
        tokens, logprobs = list(greedy), [None] * len(seqs)
        for i, seq in enumerate(seqs):
            p = seq.params
            if i in failed:
                continue
            try:
                if not (p.greedy and not p.needs_penalties):
                    tokens[i] = self._sample_row(raw[i], seq)
                if logprobs_all is not None:
                    logprobs[i] = self._logprobs(logprobs_all, i, tokens[i], p)
            except Exception as e:  # this row's own parameters or state: fail it alone
                failed[i] = _reason(e)
        return Sampled(tokens, logprobs, failed)

    @staticmethod
    def needs_host(p: SamplingParams) -> bool:
        """Rows of this request cannot be sampled by `on_device`."""
        return p.needs_penalties or p.logprobs is not None or p.guided is not None

    @staticmethod
    def _constrain(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, dict[int, str]]:
        """The logits tokens are chosen from: each row's logit_bias added, each guided row's grammar
        mask applied (on a copy, when any row has either), and the guided rows that cannot go on."""
        biased = [i for i, s in enumerate(seqs) if s.params.logit_bias]
        guided = [i for i, s in enumerate(seqs) if s.guide is not None]
        if not biased and not guided:
            return logits, {}
        # the masks first, on the host: a GPU may still be computing `logits` meanwhile
        bitmask = fill_masks([seqs[i].guide for i in guided], logits.shape[-1]) if guided else None  # type: ignore[misc]
        out = logits.clone()
        if biased:
            add_bias(out, [(i, seqs[i].params.logit_bias) for i in biased])  # type: ignore[misc]
        failed: dict[int, str] = {}
        if bitmask is not None:
            apply_masks(out, guided, bitmask)
            for k, i in enumerate(guided):
                guide = seqs[i].guide
                if guide is not None and (guide.matcher.is_error() or not bool(bitmask[k].any())):
                    failed[i] = f"guided decoding failed: {guide.error}"
        return out, failed

    def on_device(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, dict[int, str]]:
        """(S,) int64 next tokens, left on the logits' device (no host synchronization), and the rows
        whose sampling raised (their entry is the argmax, never used)."""
        biased = [(i, s.params.logit_bias) for i, s in enumerate(seqs) if s.params.logit_bias]
        if biased:
            logits = logits.clone()
            add_bias(logits, biased)  # type: ignore[arg-type]
        tokens = logits.argmax(dim=-1)
        failed: dict[int, str] = {}
        for i, seq in enumerate(seqs):
            assert not self.needs_host(seq.params), "penalties / logprobs / grammars are sampled by __call__"
            if not seq.params.greedy:
                try:
                    tokens[i] = self._draw(self._probs(logits[i], seq.params), seq)
                except Exception as e:  # this row's own parameters or state: fail it alone
                    failed[i] = _reason(e)
        return tokens, failed

    def _sample_row(self, row: torch.Tensor, seq: Sequence) -> int:
        p = seq.params
        row = apply_penalties(row.clone(), seq.prompt_ids, seq.output_ids, p)
        if p.greedy:
            return int(row.argmax())
        return int(self._draw(self._probs(row, p), seq))

    @staticmethod
    def _probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """temperature -> top-k -> top-p -> min-p over one row of logits; unnormalized probabilities."""
        row = row / p.temperature
        if p.top_k > 0 and p.top_k < row.numel():
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest set whose mass reaches top_p (the token that crosses it included)
            drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return probs

    def _draw(self, probs: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """One token id (a 0-d tensor) drawn in proportion to `probs`.

        What torch.multinomial(probs / probs.sum(), 1) computes (the same exponential draws from the
        generator, so the same token), minus its validity check, which reads a value back and so
        would make the host wait for the GPU.
        """
        probs = probs / probs.sum()
        q = torch.empty_like(probs).exponential_(1, generator=self._generator(seq))
        return (probs / q).argmax()

    def _generator(self, seq: Sequence) -> torch.Generator:
        if seq.params.seed is None:
            return self.shared
        gen = self.generators.get(seq.request_id)
        if gen is None:
            gen = self.generators[seq.request_id] = torch.Generator(device=self.device)
            gen.manual_seed(seq.params.seed)
        return gen

    @staticmethod
    def _logprobs(all_lp: torch.Tensor, i: int, token: int, p: SamplingParams) -> dict[int, float] | None:
        if p.logprobs is None:
            return None
        row = all_lp[i]
        out = {token: float(row[token])}
        if p.logprobs > 0:
            top = torch.topk(row, p.logprobs)
            out.update({int(t): float(v) for t, v in zip(top.indices, top.values, strict=True)})
        return out


def _reason(e: Exception) -> str:
    return f"sampling failed: {type(e).__name__}: {e}"


def add_bias(logits: torch.Tensor, rows: list[tuple[int, dict[int, float]]]) -> None:
    """logits (S, V) += each listed row's {token id: bias}, in place, without reading anything back."""
    index = [(i, t, b) for i, bias in rows for t, b in bias.items()]
    r, t, b = zip(*index, strict=True)
    device = logits.device
    logits.index_put_(
        (torch.tensor(r, device=device), torch.tensor(t, device=device)),
        torch.tensor(b, dtype=logits.dtype, device=device),
        accumulate=True,
    )


def apply_penalties(
    row: torch.Tensor, prompt: list[int], output: list[int], p: SamplingParams
) -> torch.Tensor:
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long, device=row.device)
        if seen.numel():
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if output and (p.frequency_penalty or p.presence_penalty):
        ids, counts = torch.tensor(output, device=row.device).unique(return_counts=True)
        row[ids] -= p.frequency_penalty * counts.to(row.dtype) + p.presence_penalty
    return row


def prompt_logprobs(batch: list[Scheduled], all_logits: torch.Tensor) -> dict[str, tuple[bool, list]]:
    """Logprob of each prompt token given the ones before it (the first has none), for echo scoring.

    Collected chunk by chunk (a long prompt is prefilled over several steps) on the sequence;
    returned with its first output token. Such requests bypass the prefix cache (block_manager),
    so every prompt position is computed here. Returns, per request of this step, (starts over,
    new entries); the engine adds them to the sequence when it commits the step.
    """
    out: dict[str, tuple[bool, list]] = {}
    offset = 0
    for item in batch:
        seq, n, k = item.seq, item.num_tokens, item.seq.params.prompt_logprobs
        start, prompt = seq.num_computed, seq.prompt_ids
        if k is not None and start < len(prompt):
            entries: list = []
            count = min(start + n, len(prompt) - 1) - start  # rows whose next token is a prompt token
            if count > 0:
                lp = torch.log_softmax(all_logits[offset : offset + count], dim=-1)
                for r, target in enumerate(prompt[start + 1 : start + 1 + count]):
                    entry = {target: float(lp[r, target])}
                    if k > 0:
                        top = torch.topk(lp[r], k)
                        entry.update({int(i): float(v) for i, v in zip(top.indices, top.values, strict=True)})
                    entries.append(entry)
            out[seq.request_id] = (start == 0, entries)  # from 0: (again, after a preemption)
        offset += n
    return out
