"""xgrammar against llguidance on the default model's tokenizer: which one the engine uses (issue 20).

For each of the five schemas (guided_schemas.py), for each library: compile time (first, then the
same schema again: the library's own cache or our template copy), the time to fill one row's token
bitmask per generated token, and correctness: random walks (random logits, masked, argmax) run to
the grammar's end; each output must parse and validate against the schema (jsonschema).

    PYTHONPATH=src python benchmarks/guided_libraries.py [--walks 20] [--out guided_libraries.json]

Both libraries must be installed (pip install xgrammar llguidance); a missing one is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from guided_schemas import SCHEMAS

from tuneloop.models.resolve import resolve_model

MAX_STEPS = 400


def model_folder() -> Path:
    return resolve_model("smollm2-135m-instruct").path


class LLGuidance:
    name = "llguidance"

    def __init__(self, folder: Path, vocab: int, eos: int):
        import llguidance
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        t0 = time.perf_counter()
        text = Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
        self.tok = llguidance.LLTokenizer(text, n_vocab=vocab, eos_token=eos)
        self.tokenizer_s = time.perf_counter() - t0
        self.cache: dict[str, object] = {}
        self.vocab = vocab

    def compile(self, schema: str):
        if schema in self.cache:  # llguidance compiles lazily; a cached matcher is deep-copied
            return self.cache[schema].deep_copy()
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        m = self.ll.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        self.cache[schema] = m
        return m.deep_copy()

    def bitmask(self):
        return self.llt.allocate_token_bitmask(1, self.vocab)

    def fill(self, m, mask) -> None:
        self.llt.fill_next_token_bitmask(m, mask, 0)

    def apply(self, logits, mask) -> None:
        self.llt.apply_token_bitmask_inplace(logits, mask)

    def accept(self, m, token: int) -> bool:
        return m.consume_token(token)

    def done(self, m) -> bool:
        return m.is_stopped()


class XGrammar:
    name = "xgrammar"

    def __init__(self, folder: Path, vocab: int, eos: int):
        import xgrammar
        from transformers import AutoTokenizer

        self.xgr = xgrammar
        t0 = time.perf_counter()
        hf = AutoTokenizer.from_pretrained(folder)
        info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=[eos])
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        self.tokenizer_s = time.perf_counter() - t0
        self.vocab = vocab

    def compile(self, schema: str):
        return self.xgr.GrammarMatcher(self.compiler.compile_json_schema(schema, any_whitespace=False))

    def bitmask(self):
        return self.xgr.allocate_token_bitmask(1, self.vocab)

    def fill(self, m, mask) -> None:
        m.fill_next_token_bitmask(mask, 0)

    def apply(self, logits, mask) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, mask)

    def accept(self, m, token: int) -> bool:
        return m.accept_token(token)

    def done(self, m) -> bool:
        return m.is_terminated()


def walk(lib, matcher, decode, eos: int, gen: torch.Generator) -> tuple[str | None, list[float]]:
    """Random logits, masked, argmax, until the grammar ends; (text or None if cut off, fill times)."""
    mask, fills, out = lib.bitmask(), [], []
    for _ in range(MAX_STEPS):
        t0 = time.perf_counter()
        lib.fill(matcher, mask)
        fills.append(time.perf_counter() - t0)
        logits = torch.randn((1, lib.vocab), generator=gen)
        lib.apply(logits, mask)
        token = int(logits.argmax())
        if not lib.accept(matcher, token):
            raise AssertionError(f"{lib.name} refused the token its own mask allowed: {token}")
        if lib.done(matcher):
            return decode([t for t in out if t != eos] + ([] if token == eos else [token])), fills
        out.append(token)
    return None, fills


def measure(lib, walks: int, decode, eos: int) -> dict:
    rows = {}
    for name, schema in SCHEMAS.items():
        text = json.dumps(schema)
        t0 = time.perf_counter()
        try:
            lib.compile(text)
        except Exception as e:  # a schema the library cannot compile is a result
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        lib.compile(text)
        cached = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(0)
        fills, valid, ended, bad = [], 0, 0, []
        for _ in range(walks):
            out, f = walk(lib, lib.compile(text), decode, eos, gen)
            fills += f
            if out is None:
                continue
            ended += 1
            try:
                jsonschema.validate(json.loads(out), schema)
                valid += 1
            except (ValueError, jsonschema.ValidationError) as e:
                bad.append(f"{out[:80]!r}: {str(e).splitlines()[0][:80]}")
        rows[name] = {
            "compile_first_ms": round(first * 1e3, 2),
            "compile_cached_ms": round(cached * 1e3, 3),
            "mask_us_per_token": round(statistics.mean(fills) * 1e6, 1),
            "mask_us_p99": round(sorted(fills)[int(0.99 * (len(fills) - 1))] * 1e6, 1),
            "walks_ended": ended,
            "walks_valid": valid,
            "invalid_examples": bad[:3],
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--walks", type=int, default=20)
    ap.add_argument("--out", default="guided_libraries.json")
    a = ap.parse_args()
    folder = model_folder()
    config = json.loads((folder / "config.json").read_text())
    vocab, eos = config["vocab_size"], config["eos_token_id"]
    decoder = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def decode(ids: list[int]) -> str:
        return decoder.decode(ids, skip_special_tokens=False)

    report: dict = {"model": str(folder), "vocab_size": vocab, "walks": a.walks, "libraries": {}}
    for cls in (LLGuidance, XGrammar):
        try:
            lib = cls(folder, vocab, eos)
        except ImportError as e:
            report["libraries"][cls.name] = {"error": f"not installed: {e}"}
            continue
        report["libraries"][cls.name] = {
            "tokenizer_info_s": round(lib.tokenizer_s, 3),
            "schemas": measure(lib, a.walks, decode, eos),
        }
        print(json.dumps({cls.name: report["libraries"][cls.name]}, indent=1), flush=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
