"""`tuneloop keys ...` through the CLI app, and `tuneloop serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()


def test_keys_create_list_revoke():
    created = runner.invoke(app, ["keys", "create", "--name", "ci", "--scopes", "inference", "--rpm", "5"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("tl-")
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0 and '"rpm": 5' in listed.output and key not in listed.output
    key_id = key.split("-")[1]
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert '"revoked_at": null' not in runner.invoke(app, ["keys", "list", "--json"]).output


def test_keys_unknown_scope_and_unknown_id_are_user_errors():
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2 and "unknown scope" in bad.output
    missing = runner.invoke(app, ["keys", "revoke", "nope"])
    assert missing.exit_code == 2 and "no API key" in missing.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_and_shuts_down_gracefully(tiny_llama):
    port = _free_port()
    cmd = [sys.executable, "-m", "tuneloop", "serve", "--model", str(tiny_llama), "--name", "tiny",
           "--port", str(port), "--no-auth", "--kv-cache-gib", "0.02", "--log-json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert out.choices[0].message.content is not None
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    lines = [json.loads(line) for line in proc.stdout.read().decode().splitlines() if line.startswith("{")]
    assert any(entry["logger"] == "uvicorn.access" for entry in lines)
