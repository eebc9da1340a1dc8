"""`profile=true`: a torch profiler trace of a few steps (TensorBoard / Perfetto) and the top operators."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("tuneloop.train")


class StepProfiler:
    """Skips 1 step, warms up 1, records 3; `step()` is called after every optimizer step."""

    def __init__(self, out: Path, wait: int = 1, warmup: int = 1, active: int = 3):
        self.out = out
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(out)),
            record_shapes=True,
            profile_memory=True,
        )

    def __enter__(self) -> StepProfiler:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prof.__enter__()
        return self

    def step(self) -> None:
        self.prof.step()

    def __exit__(self, *exc: Any) -> None:
        self.prof.__exit__(*exc)
        try:
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = self.prof.key_averages().table(sort_by=sort, row_limit=15)
        except (AssertionError, RuntimeError):  # fewer steps than the schedule records
            table = "(no profiled steps: the run was shorter than the profiler schedule)"
        (self.out / "top_operators.txt").write_text(table)
        log.info("profiler trace in %s; top operators:\n%s", self.out, table)
