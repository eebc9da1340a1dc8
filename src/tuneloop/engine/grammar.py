"""Grammar-constrained decoding: a GuidedDecoding spec -> one llguidance matcher per request -> token masks.

Why llguidance rather than xgrammar (benchmarks/guided_libraries.py, on the default model's tokenizer,
five JSON schemas): every random walk of its masks parsed and validated (xgrammar let an unescaped
control character into a JSON string once in 100), a schema compiles in 1-2 ms (xgrammar 5-20 ms:
it precomputes mask caches), and it is a 3 MB wheel with no dependencies (xgrammar pulls triton,
~1 GB, and a TVM runtime). Its masks cost more per token (~0.1 ms against ~0.015 ms a row on a CPU
core): they are filled on the host in parallel threads (LLExecutor) while the device still runs the
step's forward pass (the runner queues it without waiting), so on a GPU most of it is hidden.

`GrammarCompiler` (one per engine): the tokenizer's view of the vocabulary, built once from the model
folder's tokenizer.json at the first guided request; each spec compiled once into a template matcher,
kept in a bounded LRU by `GuidedDecoding.key`; every request gets its own copy (`start`), which the
engine advances with each token it appends (`Guide.accept`), and drops when the request ends.
`fill_masks` / `apply_masks`: the sampler's part, per step, for the guided rows only.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import llguidance
import numpy as np
import torch
from tokenizers import Tokenizer

from tuneloop.engine.guided import GuidedDecoding

CACHE_SIZE = 256  # compiled grammars kept (a template matcher is small: its lexer states grow lazily)
# JSON between tokens as json.dumps writes it: what models have seen most (compact_whitespace)
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Guide:
    """One request's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def accept(self, token: int) -> bool:
        """Advance by the token the engine appended; False (and `error` says why) if the grammar refuses it."""
        return self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """Nothing but the end can follow: the output is complete (finish_reason "stop")."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error() or "the grammar admits no further token"


class GrammarCompiler:
    def __init__(self, folder: Path, vocab_size: int, eos_ids: set[int], cache_size: int = CACHE_SIZE):
        self.folder, self.vocab_size = folder, vocab_size
        self.eos_ids = sorted(t for t in eos_ids if 0 <= t < vocab_size)  # (random test models say -1)
        self.cache_size = cache_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._templates: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self.compiles = 0  # specs compiled (cache misses), for stats and tests

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """Built at the first guided request (~0.8 s for a 49k vocabulary), then kept."""
        if self._tokenizer is None:
            path = self.folder / "tokenizer.json"
            if not path.is_file():
                raise ValueError(
                    f"guided decoding needs the model's tokenizer.json, which {self.folder} does not have; "
                    "save the tokenizer with the model (tokenizer.save_pretrained) to serve structured outputs"
                )
            key = (str(path.resolve()), path.stat().st_mtime_ns, self.vocab_size, tuple(self.eos_ids))
            self._tokenizer = _load_tokenizer(*key)
        return self._tokenizer

    def start(self, spec: GuidedDecoding) -> Guide:
        """A fresh matcher for one request; ValueError naming the spec and the reason when it cannot compile."""
        template = self._templates.get(spec.key)
        if template is None:
            template = self._compile(spec)
            self._templates[spec.key] = template
            if len(self._templates) > self.cache_size:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(spec.key)
        return Guide(template.deep_copy())

    def _compile(self, spec: GuidedDecoding) -> llguidance.LLMatcher:
        grammar = self._grammar(spec)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(_describe(spec, matcher.get_error()))
        self.compiles += 1
        return matcher

    @staticmethod
    def _grammar(spec: GuidedDecoding) -> str:
        ll = llguidance.LLMatcher
        try:
            if spec.json_schema is not None or spec.json_object:
                options = COMPACT if spec.compact_whitespace else {}
                schema = spec.json_schema if spec.json_schema is not None else '{"type": "object"}'
                return ll.grammar_from_json_schema(schema, defaults=options)  # type: ignore[arg-type]
            if spec.regex is not None:
                return ll.grammar_from_regex(spec.regex)
            if spec.choice is not None:
                return llguidance.grammar_from("choice", json.dumps(list(spec.choice)))
            assert spec.grammar is not None
            return llguidance.grammar_from("gbnf", spec.grammar)  # GBNF, or Lark as it is
        except ValueError as e:
            raise ValueError(_describe(spec, str(e))) from None


def fill_masks(guides: list[Guide], vocab_size: int) -> torch.Tensor:
    """(G, ceil(V/32)) int32 on the host: bit t of row k set when token t may follow guide k's output."""
    # llguidance.torch does the same, but importing it imports torch._dynamo (seconds) for a helper
    bitmask = torch.full((len(guides), (vocab_size + 31) // 32), -1, dtype=torch.int32)
    row_bytes = bitmask.shape[1] * 4
    if len(guides) == 1:
        guides[0].matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), row_bytes)
    else:  # rows in parallel threads (the library releases the GIL)
        pairs = [(g.matcher, k) for k, g in enumerate(guides)]
        _executor().unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), row_bytes, len(guides))
    return bitmask


def apply_masks(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """-inf in place at every token of logits[rows] (R, V) whose bit is 0; the rest untouched."""
    vocab = logits.shape[-1]
    if not logits.is_cuda:  # NumPy unpacks bits by table lookup: ~10x the shifts below on a CPU
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        banned = torch.from_numpy(bits) == 0  # (R, V)
        for k, i in enumerate(rows):
            logits[i].masked_fill_(banned[k], float("-inf"))
        return
    words = bitmask.to(logits.device, non_blocking=True)  # (R, W)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, :vocab]  # (R, 32 W) -> (R, V)
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits.index_select(0, index).masked_fill(~allowed, float("-inf"))


@functools.lru_cache(maxsize=4)  # engines of one process on the same model share it
def _load_tokenizer(
    path: str, mtime_ns: int, vocab_size: int, eos_ids: tuple[int, ...]
) -> llguidance.LLTokenizer:
    text = Tokenizer.from_file(path).to_str()
    return llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=list(eos_ids) or None)


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()


def _describe(spec: GuidedDecoding, reason: str) -> str:
    """The library's reason, with where in the schema it points when that can be found."""
    what = f"guided {spec.kind}" + (f" {spec.name!r}" if spec.name else "")
    reason = reason.strip().replace("\n", " ")
    if spec.json_schema is not None:
        where = _locate(json.loads(spec.json_schema), reason)
        if where is not None:
            return f"{what} cannot be compiled at {where or '/'}: {reason}"
    return f"{what} cannot be compiled: {reason}"


def _locate(schema: object, reason: str) -> str | None:
    """The JSON pointer of the schema value the library's message quotes (its messages name the value,
    e.g. "Unknown format: weird-format", not where it is): the longest quoted value wins."""
    best: tuple[int, str] | None = None
    for path, value in _leaves(schema, ""):
        text = value.lstrip("#") if value.startswith("#/") else value
        if len(text) >= 2 and text in reason and (best is None or len(text) > best[0]):
            best = (len(text), path)
    return best[1] if best else None


def _leaves(node: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}/{i}")
    elif isinstance(node, str):
        yield path, node
