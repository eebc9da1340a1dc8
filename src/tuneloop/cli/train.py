"""`tuneloop train CONFIG.yaml [key=value ...] [--nproc N]`."""

from __future__ import annotations

import os
import subprocess
import sys

import typer
from rich.console import Console

from tuneloop.config import load_config
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
        1, "--nnodes", min=1, help="Nodes (multi-node: also set MASTER_ADDR / NODE_RANK)."
    ),
) -> None:
    """Fine-tune a model (SFT, continued pretraining, DPO; full, LoRA, QLoRA), tracked in MLflow, resumable."""
    args = [config] if config and "=" not in config else []
    overrides = ([config] if config and "=" in config else []) + list(overrides or [])
    from tuneloop.train.recipe import read_data, run  # torch and transformers: seconds to import

    cfg = load_config(TrainConfig, args[0] if args else None, overrides)  # validate before spawning anything
    if (nproc > 1 or nnodes > 1) and "WORLD_SIZE" not in os.environ:
        read_data(cfg)  # a bad row is named here, once, not by every worker after torchrun started them
        raise typer.Exit(_torchrun(args[0] if args else "-", overrides, nproc, nnodes))

    setup_logging()
    result = run(cfg)
    console.print(f"[green]✓[/] run folder: {result.run_dir}")
    console.print(f"  model: {result.model_dir}")
    if result.mlflow_run_id:
        console.print(f"  MLflow run {result.mlflow_run_id} at {result.tracking_uri}")
    evals = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
    if evals:
        console.print("  eval: " + ", ".join(f"{k[5:]}={v:.4g}" for k, v in evals.items()))


def _torchrun(config: str, overrides: list[str], nproc: int, nnodes: int) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--node-rank={os.environ.get('NODE_RANK', '0')}",
            f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
        ]
    cmd += ["-m", "tuneloop.train.launch", config, *overrides]
    console.print(f"[bold cyan]==>[/] {' '.join(cmd)}")
    return subprocess.call(cmd)
