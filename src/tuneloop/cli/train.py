"""`tuneloop train CONFIG.yaml [key=value ...] [--nproc N] [--nnodes N --rdzv-endpoint HOST:PORT]`.

Several processes or nodes go through torchrun. Nodes meet at a c10d rendezvous (one node's
`HOST:PORT`, where torchrun on that host serves it): the same command on every node, no ranks to
hand out. A node that fails or leaves makes torchrun restart every worker (`--max-restarts`); each
restart resumes from the last checkpoint (resume=auto), so set checkpoint.every.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import typer
from rich.console import Console

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.train.config import TrainConfig
from tuneloop.train.logs import setup_logging

console = Console()


def train(
    config: str = typer.Argument(
        None, help="Training config YAML (optional: every key can be given as key=value)."
    ),
    overrides: list[str] = typer.Argument(None, help="Config overrides: lora.rank=32 optim.lr=1e-4 …"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (GPUs) on this node, through torchrun."),
    nnodes: int = typer.Option(
        1, "--nnodes", min=1, help="Nodes; each runs this same command (and --rdzv-endpoint)."
    ),
    rdzv_endpoint: str = typer.Option(
        None,
        "--rdzv-endpoint",
        help="HOST:PORT where the nodes meet (c10d rendezvous, served by torchrun on that host); "
        "default: $MASTER_ADDR:$MASTER_PORT.",
    ),
    rdzv_id: str = typer.Option(
        None, "--rdzv-id", help="Rendezvous id, the same on every node (default: the run name)."
    ),
    node_rank: int = typer.Option(
        None, "--node-rank", min=0, help="This node's rank (optional: the rendezvous assigns ranks)."
    ),
    max_restarts: int = typer.Option(
        0,
        "--max-restarts",
        min=0,
        help="Restart all workers this many times when a process or node fails; each restart resumes "
        "from the last checkpoint.",
    ),
) -> None:
    """Fine-tune a model (SFT, continued pretraining, DPO; full, LoRA, QLoRA), tracked in MLflow, resumable."""
    args = [config] if config and "=" not in config else []
    overrides = ([config] if config and "=" in config else []) + list(overrides or [])
    from tuneloop.train.recipe import read_data, run  # torch and transformers: seconds to import

    cfg = load_config(TrainConfig, args[0] if args else None, overrides)  # validate before spawning anything
    if (nproc > 1 or nnodes > 1) and "WORLD_SIZE" not in os.environ:
        read_data(cfg)  # a bad row is named here, once, not by every worker after torchrun started them
        launch = _Launch(nproc, nnodes, rdzv_endpoint, rdzv_id or cfg.run_name(), node_rank, max_restarts)
        raise typer.Exit(_torchrun(args[0] if args else "-", overrides, launch))

    setup_logging()
    result = run(cfg)
    console.print(f"[green]✓[/] run folder: {result.run_dir}")
    console.print(f"  model: {result.model_dir}")
    if result.mlflow_run_id:
        console.print(f"  MLflow run {result.mlflow_run_id} at {result.tracking_uri}")
    m = result.metrics
    if m.get("steps"):
        console.print(
            f"  {m['steps']} steps in {m['train_seconds']:.1f} s: {m['tokens_per_s']:,.0f} tokens/s steady "
            f"({m['tokens_per_s_overall']:,.0f} counting the first {m['warmup_steps']} warm-up step(s))"
        )
    evals = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
    if evals:
        console.print("  eval: " + ", ".join(f"{k[5:]}={v:.4g}" for k, v in evals.items()))


@dataclass
class _Launch:
    nproc: int
    nnodes: int
    rdzv_endpoint: str | None
    rdzv_id: str
    node_rank: int | None
    max_restarts: int


def _torchrun_args(launch: _Launch) -> list[str]:
    args = [
        f"--nproc-per-node={launch.nproc}",
        f"--nnodes={launch.nnodes}",
        f"--max-restarts={launch.max_restarts}",
    ]
    if launch.nnodes == 1:
        return [*args, "--standalone"]
    endpoint = launch.rdzv_endpoint or (
        f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29400')}"
        if "MASTER_ADDR" in os.environ
        else None
    )
    if endpoint is None:
        raise TuneloopError(
            f"--nnodes {launch.nnodes} needs the address where the nodes meet",
            hint="pass --rdzv-endpoint HOST:PORT (the same on every node; torchrun on HOST serves it), "
            "or set MASTER_ADDR (and MASTER_PORT)",
        )
    args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={launch.rdzv_id}"]
    if launch.node_rank is not None:
        args.append(f"--node-rank={launch.node_rank}")
    return args


def _torchrun(config: str, overrides: list[str], launch: _Launch) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", *_torchrun_args(launch)]
    cmd += ["-m", "tuneloop.train.launch", config, *overrides]
    console.print(f"[bold cyan]==>[/] {' '.join(cmd)}")
    return subprocess.call(cmd, env=_torchrun_env(launch))


def _torchrun_env(launch: _Launch) -> dict[str, str]:
    """Across nodes, the rendezvous store is not shared with the workers' process group: with it
    shared (torchrun's default since torch 2.4), a replacement node that joins a restarted job waits
    forever for a MASTER_ADDR that the surviving rank 0 never writes again (pytorch/pytorch#135712;
    tests/train/test_multinode.py kills a node and brings it back). A value the user set is kept."""
    env = dict(os.environ)
    if launch.nnodes > 1:
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return env
