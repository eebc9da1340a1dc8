"""Two "nodes" on one host: two `tuneloop train --nnodes 2` launches meeting at a c10d rendezvous
on localhost (CPU, gloo) train as one process does; a node that dies and comes back (what the Helm
chart's Job does for a preempted pod) makes torchrun restart the workers, which resume from the last
checkpoint and give the uninterrupted loss curve."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

from .conftest import base_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(args: list[str], port: int, rank: int, log: Path, max_restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tuneloop", "train", *args, "--nnodes", "2", "--nproc", "1",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--node-rank", str(rank), "--max-restarts", str(max_restarts)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # its own process group: killing the "node" kills torchrun and its worker together
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it, as a deleted pod goes: its workers run in their
    own sessions (torch elastic starts them so), so killing torchrun's process group would miss them."""
    tree = psutil.Process(proc.pid)
    for p in [*tree.children(recursive=True), tree]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


def wait_for_store(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"no rendezvous store on port {port} after {timeout} s")


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                kill_node(p)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, f"node exited {p.returncode}:\n{log.read_text()[-4000:]}"


def loss_curve(out: Path) -> list[float]:
    return [loss for _, loss in json.loads((out / "metrics.json").read_text())["train_loss"]]


def single(tiny_llama, data, out, **extra) -> list[float]:
    result = run(load_config(TrainConfig, None, base_overrides(tiny_llama, data, out, **extra)))
    return [loss for _, loss in result.metrics["train_loss"]]


def test_two_nodes_give_the_loss_curve_of_one_process(tiny_llama, sft_dataset, tmp_path):
    one = single(tiny_llama, sft_dataset, tmp_path / "one", max_steps=3)
    out = tmp_path / "two"
    args = base_overrides(tiny_llama, sft_dataset, out, max_steps=3)
    port, logs = free_port(), [tmp_path / "node0.log", tmp_path / "node1.log"]
    finish([node(args, port, 0, logs[0]), node(args, port, 1, logs[1])], logs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert loss_curve(out) == pytest.approx(one, rel=1e-4)


def test_nnodes_without_a_rendezvous_endpoint_is_a_clear_error(
    tiny_llama, sft_dataset, tmp_path, monkeypatch
):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(
        app, ["train", *base_overrides(tiny_llama, sft_dataset, tmp_path / "r"), "--nnodes", "2"]
    )
    assert result.exit_code != 0
    assert "--nnodes 2 needs the address where the nodes meet" in result.output
    assert "--rdzv-endpoint HOST:PORT" in result.output


def test_a_node_that_dies_and_comes_back_resumes_the_run_from_its_last_checkpoint(
    tiny_llama, sft_dataset, tmp_path
):
    """Node 1 is killed with SIGKILL (torchrun and its worker: a preempted pod) after the first
    checkpoint; node 0's worker fails on the broken collective, its torchrun restarts it
    (--max-restarts) and waits at the rendezvous; node 1 comes back (the Job's new pod), both resume
    from the checkpoint, and the run ends with the loss curve of an uninterrupted single process."""
    steps = 200  # the tiny model trains ~20 steps a second: enough left to kill the node mid-run
    one = single(tiny_llama, sft_dataset, tmp_path / "one", max_steps=steps)
    out = tmp_path / "two"
    args = base_overrides(tiny_llama, sft_dataset, out, max_steps=steps, **{"checkpoint.every": 5})
    port = free_port()
    logs = [tmp_path / "node0.log", tmp_path / "node1.log", tmp_path / "node1-again.log"]
    first = node(args, port, 0, logs[0], max_restarts=2)
    wait_for_store(port, first, logs[0])  # node 0 hosts the rendezvous store (pod 0 behind the service)
    second = node(args, port, 1, logs[1], max_restarts=2)
    procs = [first, second]
    try:
        deadline = time.time() + 240
        while not list((out / "checkpoints").glob("step-*/state.json")):
            assert time.time() < deadline, logs[0].read_text()[-3000:]
            assert first.poll() is None and second.poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        kill_node(second)
        assert not (out / "metrics.json").exists(), "the run ended before the node was killed"
        procs = [first, node(args, port, 1, logs[2], max_restarts=2)]
        finish(procs, [logs[0], logs[2]], timeout=400)
    finally:
        for p in procs:
            if p.poll() is None:
                kill_node(p)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == steps
    starts = json.loads((out / "run.json").read_text())["segments"][0]["starts"]
    assert starts >= 2, starts  # the run was started again and resumed, not begun anew
    assert loss_curve(out) == pytest.approx(one, rel=1e-4)
