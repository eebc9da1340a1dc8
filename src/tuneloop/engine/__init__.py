"""The inference engine: token ids in, tokens out (continuous batching, paged KV cache, prefix cache).

Imports no server stack; `tuneloop.serve` talks to it through `AsyncEngine`.
"""

from tuneloop.engine.config import EngineConfig
from tuneloop.engine.engine import EngineStats, LLMEngine
from tuneloop.engine.outputs import Generation, RequestOutput
from tuneloop.engine.sampling import SamplingParams

__all__ = ["EngineConfig", "EngineStats", "Generation", "LLMEngine", "RequestOutput", "SamplingParams"]
