"""The feedback loop's stages: gateway traffic and feedback -> curated data -> retrained, gated, canaried model.

    from tuneloop.config import load_config
    from tuneloop.flows.cycle import Loop
    from tuneloop.loop import LoopConfig
    cfg = load_config(LoopConfig, "loop.yaml")
    Loop("acme-support", cfg).run_cycle()      # one resumable cycle; decisions in TUNELOOP_HOME/loop/NAME/

Stages (one module each): collect, curate (filters, facts, frozen, injection, kto, trust), retrain,
gate (stats), canary; the cycle that wires them is a flow (flows/cycle.py). A stage imports other
stages and interactions, never the gateway (serve) or a flow.
"""

from __future__ import annotations

from tuneloop.loop.config import LoopConfig

__all__ = ["LoopConfig"]
