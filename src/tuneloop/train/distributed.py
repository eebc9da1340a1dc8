"""Process group setup under torchrun, and the two collectives the trainer needs.

Gradients are summed across processes once per optimizer step, after local accumulation — what
DDP does under `no_sync` for all but the last micro-batch. Doing it explicitly lets every process
first agree whether any of them ran out of memory, so all retry the step together instead of
hanging in a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Dist:
    """Join the process group torchrun set up (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local)


def sum_scalars(values: list[float], d: Dist, device: Any) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def max_int(value: int, d: Dist, device: Any) -> int:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_flag(flag: bool, d: Dist, device: Any) -> bool:
    return sum_scalars([1.0 if flag else 0.0], d, device)[0] > 0


def gather_objects(value: Any, d: Dist) -> list[Any]:
    """Every process's `value` (JSON-like), in rank order, on every process."""
    if d.world == 1:
        return [value]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def sum_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """All-reduce (sum) the gradients of `params`, flattened into one buffer per dtype."""
    if d.world == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:  # a process that saw no example this step still joins with zeros
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        # process 0 writes the outputs while the others are done: leaving together keeps one process's exit
        # from closing connections the other still holds
        dist.barrier()
        dist.destroy_process_group()
