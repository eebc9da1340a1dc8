"""The feedback loop: gateway traffic and feedback -> curated data -> retrained, gated, canaried model.

    from tuneloop.config import load_config
    from tuneloop.loop import Loop, LoopConfig
    cfg = load_config(LoopConfig, "loop.yaml")
    Loop("acme-support", cfg).run_cycle()      # one resumable cycle; decisions in TUNELOOP_HOME/loop/NAME/

Stages (one module each): collect, curate (filters, review), retrain, gate, canary; cycle.py wires them.
"""

from __future__ import annotations

from tuneloop.loop.config import LoopConfig
from tuneloop.loop.cycle import CycleResult, Loop

__all__ = ["CycleResult", "Loop", "LoopConfig"]
