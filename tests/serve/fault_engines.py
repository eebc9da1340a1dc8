"""Real engines on the tiny model with a fault or a slowdown built in, for gateway tests.

`build` runs where the engine runs: in the server process (AsyncEngine) or in the engine process,
which imports this module by name (the `build` callable of EngineProcess is pickled by reference).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from tuneloop.engine import LLMEngine
from tuneloop.engine.async_engine import AsyncEngine
from tuneloop.engine.process import EngineProcess
from tuneloop.models.loading import load_tokenizer
from tuneloop.serve.local import LocalClient, SharedEngine

ENGINE = {"block_size": 4, "kv_cache_gib": 0.02}


def build(
    folder: str,
    step_s: float = 0.0,
    poison_seed: int | None = None,
    poison_after: int = 2,
    no_eos: bool = False,
) -> LLMEngine:
    """The engine, with every model step `step_s` slower; with `poison_seed`, the model runner raises
    for every step that holds a request of that seed once it has `poison_after` tokens; `no_eos`:
    only max_tokens ends a request (a random model's greedy text may hit EOS at any point)."""
    eng = LLMEngine.from_pretrained(folder, **ENGINE)
    prepare = eng.runner.prepare  # the first phase of a step: a raise there leaves nothing half done

    def faulty(batch: list) -> Any:
        if step_s:
            time.sleep(step_s)
        if poison_seed is not None and any(
            item.seq.params.seed == poison_seed and len(item.seq.output_ids) >= poison_after for item in batch
        ):
            raise RuntimeError("injected fault for the poisoned request")
        return prepare(batch)

    eng.runner.prepare = faulty
    if no_eos:
        eng.eos_ids = set()
    return eng


def client(folder: Path, process: bool, **opts: Any) -> LocalClient:
    """A LocalClient over that engine, in this process or in an engine process of its own."""
    if process:
        engine: Any = EngineProcess(folder, build=functools.partial(build, str(folder), **opts))
    else:
        engine = AsyncEngine(build(str(folder), **opts))
    return LocalClient(SharedEngine(engine, load_tokenizer(folder), folder))
