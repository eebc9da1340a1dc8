"""Object-store artifacts (S3 through a local moto server) and a remote MLflow tracking server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop import paths
from tuneloop.errors import TuneloopError

moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = f"models-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _objects(endpoint: str, bucket: str) -> list[str]:
    import boto3

    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_artifacts_in_an_object_store_round_trip_verified(adapter_run, bucket, s3_endpoint, monkeypatch):
    from tuneloop.registry import Registry

    monkeypatch.setenv("TUNELOOP_ARTIFACT_LOCATION", f"s3://{bucket}/registry")
    registry = Registry()
    info = registry.register_run(adapter_run, "acme")
    keys = _objects(s3_endpoint, bucket)
    assert any(k.endswith("model/adapter_model.safetensors") for k in keys)
    assert not list((paths.home() / "artifacts").rglob("adapter_model.safetensors"))  # nothing local
    shutil.rmtree(paths.home() / "registry")
    assert registry.get("acme/1").path.joinpath("adapter_config.json").is_file()
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    run_id = registry.client.get_model_version("acme", "1").run_id
    key = next(k for k in keys if run_id in k and k.endswith("model/tokenizer.json"))
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    shutil.rmtree(info.path.parent)
    with pytest.raises(TuneloopError, match=r"checksum mismatch in model/tokenizer\.json"):
        registry.get("acme/1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path, bucket: str) -> Iterator[str]:
    shutil.copy(mlflow_template, tmp_path / "server.db")  # skips the schema migration (seconds)
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", f"s3://{bucket}/mlflow"]  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_remote_tracking_server_with_proxied_object_store_artifacts(
    adapter_run, mlflow_server, bucket, s3_endpoint
):
    from tuneloop.registry import Registry

    registry = Registry(mlflow_server)
    info = registry.register_run(adapter_run, "acme")
    registry.promote("acme", info.version, "production")
    assert registry.client.get_model_version("acme", "1").source.startswith("mlflow-artifacts:")
    assert any(k.endswith("adapter_model.safetensors") for k in _objects(s3_endpoint, bucket))
    assert info.tags["tuneloop.base"] == "tiny-llama/1"
    shutil.rmtree(paths.home() / "registry")
    assert registry.get("acme@production").path.joinpath("adapter_model.safetensors").is_file()
    assert (
        not (paths.home() / "mlflow.db").exists() or Registry().names() == []
    )  # nothing went to the local DB
