"""The inference engine: token ids in, tokens out (continuous batching, paged KV cache, prefix cache).

Imports no server stack; `tuneloop.serve` talks to it through `AsyncEngine` (a stepping thread) or
`EngineProcess` (a process of its own, typed messages: messages.py). One noun per module:
  engine.py           the loop: add_request -> step() -> outputs (new tokens only), failure isolation
  scheduler.py        who runs and how many tokens; async_scheduler.py: placeholders for tokens in flight
  block_manager.py    KV blocks, reference counts, prefix cache
  runner.py           the runner protocol: prepare -> run -> sample; model_runner.py (native models,
                      paged cache, CUDA graphs), hf_runner.py (any other causal LM through transformers)
  sampler.py          next tokens from logits, per-request parameters (logit_bias, grammar masks)
  guided.py           what a request's output must match (structured outputs, forced tool calls)
  grammar.py          that spec compiled (llguidance, cached) and followed token by token
"""

from tuneloop.engine.config import EngineConfig
from tuneloop.engine.engine import EngineStats, LLMEngine
from tuneloop.engine.guided import GuidedDecoding
from tuneloop.engine.outputs import Generation, RequestOutput
from tuneloop.engine.sampling import SamplingParams

__all__ = [
    "EngineConfig",
    "EngineStats",
    "Generation",
    "GuidedDecoding",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
]
