"""`tuneloop doctor`: the JSON report, the human report, the GPU probes and the missing-extras check.

This machine has no GPU, so real GPUs are faked with an `nvidia-smi` script put first on PATH; the real
NVML / nvidia-smi / torch.cuda paths on a GPU host are the one thing these tests cannot exercise here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.resources import doctor

runner = CliRunner()
NO_GPU_HERE = shutil.which("nvidia-smi") is None and not torch.cuda.is_available()

H100_ROWS = (
    "0, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0, 550.54.15\n"
    "1, NVIDIA H100 80GB HBM3, 81559, 1024, 9.0, 550.54.15\n"
)
FULL_QUERY = "--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version"


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Put an executable `nvidia-smi` shell script first on PATH and make NVML unavailable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    # A None entry in sys.modules makes `import pynvml` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _h100_script() -> str:
    # Answer only the exact query doctor is meant to send, so a changed query fails the test.
    return f'if [ "$1" = "{FULL_QUERY}" ]; then printf "{H100_ROWS}"; else exit 2; fi'


def test_json_report_has_stable_keys_and_sane_values():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {
        "system",
        "torch",
        "driver_version",
        "gpu_source",
        "gpus",
        "libraries",
        "extras",
        "warnings",
    }
    assert data["system"]["cores_logical"] >= 1
    assert data["system"]["ram_total"] > 0
    assert 0 < data["system"]["ram_available"] <= data["system"]["ram_total"]
    assert data["system"]["disk_free"] > 0
    assert data["torch"]["version"] == torch.__version__
    assert data["libraries"]["torch"] == torch.__version__
    assert set(data["extras"]) == set(doctor.EXTRAS)
    for status in data["extras"].values():
        assert status["ok"] == (not status["missing"])
        assert (status["pip_command"] is None) == status["ok"]


@pytest.mark.skipif(not NO_GPU_HERE, reason="this host has a GPU")
def test_no_gpu_here_is_reported_in_json_and_human_output():
    data = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert data["gpus"] == []
    assert doctor.detect_gpus() == []
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "No NVIDIA GPU found" in result.output
    for section in ("System", "Libraries", "Extras"):
        assert section in result.output


def test_nvidia_smi_parser_reads_two_h100s(tmp_path, monkeypatch):
    # Cannot run for real here (no GPU, no nvidia-smi): a fake script stands in for the tool.
    _fake_smi(tmp_path, monkeypatch, _h100_script())
    gpus = doctor.detect_gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert all(g.name == "NVIDIA H100 80GB HBM3" for g in gpus)
    assert gpus[0].memory_total == 81559 * 1024 * 1024
    assert gpus[0].memory_free == 80000 * 1024 * 1024
    assert gpus[1].memory_free == 1024 * 1024 * 1024
    assert all(g.compute_capability == "9.0" for g in gpus)

    report = doctor.collect()
    assert report.gpu_source == "nvidia-smi"
    assert report.driver_version == "550.54.15"
    assert any("bf16 is supported" in w for w in report.warnings)
    assert not any("No NVIDIA GPU" in w for w in report.warnings)


def test_cuda_visible_devices_limits_the_reported_gpus(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, _h100_script())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in doctor.detect_gpus()] == [1]


def test_old_driver_without_compute_cap_field_still_lists_gpus(tmp_path, monkeypatch):
    # Drivers before ~510 reject compute_cap; doctor retries without it.
    script = (
        'case "$1" in *compute_cap*) echo "Field compute_cap is not valid" >&2; exit 2;; esac\n'
        'printf "0, Tesla V100-SXM2-16GB, 16160, 16000, 470.82.01\\n"'
    )
    _fake_smi(tmp_path, monkeypatch, script)
    gpus = doctor.detect_gpus()
    assert len(gpus) == 1
    assert gpus[0].name == "Tesla V100-SXM2-16GB"
    assert gpus[0].compute_capability is None
    assert doctor.collect().driver_version == "470.82.01"


@pytest.mark.parametrize(
    "body",
    [
        "exit 1",
        'echo "garbage that is not csv"',
        'printf "0, H100, lots, 80000, 9.0, 550.54.15\\n"',
        'printf "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver\\n"',
    ],
    ids=["exit-1", "garbage", "non-numeric-memory", "driver-error-text"],
)
def test_broken_nvidia_smi_yields_no_gpus_without_raising(tmp_path, monkeypatch, body):
    _fake_smi(tmp_path, monkeypatch, body)
    # Make the torch fallback say "nothing" too, so the result does not depend on the host.
    monkeypatch.setattr(doctor, "_gpus_from_torch", lambda: None)
    assert doctor._gpus_from_smi() is None
    assert doctor.detect_gpus() == []


def test_missing_extra_lists_requirements_and_pip_hint(monkeypatch):
    fake = [
        'surely-not-installed-pkg-xyz>=1.0; extra == "serve"',
        'packaging>=99999; extra == "serve"',  # installed, but far too old
        'packaging>=1; extra == "serve"',  # satisfied: must not be listed
    ]
    monkeypatch.setattr(doctor, "extra_requirements", lambda extra, dist="tuneloop": fake)
    status = doctor.check_extras(("serve",))["serve"]
    assert not status.ok
    assert [m.name for m in status.missing] == ["surely-not-installed-pkg-xyz", "packaging"]
    assert status.missing[0].installed is None
    assert status.missing[0].requirement == "surely-not-installed-pkg-xyz>=1.0"
    assert status.missing[1].installed == doctor.installed_version("packaging")
    assert status.pip_command == "pip install 'tuneloop[serve]'"

    # The human report must show the hint intact (rich would eat "[serve]" as markup if unescaped).
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "250"})  # wide enough not to wrap cells
    assert result.exit_code == 0, result.output
    assert "pip install 'tuneloop[serve]'" in result.output
    assert "surely-not-installed-pkg-xyz" in result.output


def test_extra_all_expands_to_the_other_extras():
    names = {r.split(">")[0].split("[")[0] for r in doctor.extra_requirements("all")}
    assert {"peft", "fastapi", "pyarrow", "pyspark", "pytest"} <= names
    assert "tuneloop" not in names
    assert "liger-kernel" not in names  # 'gpu' is not part of 'all' (CUDA-only packages)


def test_disk_is_measured_at_nearest_existing_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "not" / "yet" / "there"))
    system = doctor._system_info()
    assert Path(system.disk_path) == tmp_path.resolve()
    assert system.home.endswith("there")
    assert system.disk_free > 0


def test_advice_flags_old_gpus_without_bf16():
    v100 = doctor.GpuInfo(0, "Tesla V100", 16 * 1024**3, 16 * 1024**3, "7.0")
    a100 = doctor.GpuInfo(1, "A100", 80 * 1024**3, 80 * 1024**3, "8.0")
    advice = doctor._bf16_advice([v100, a100])
    assert advice is not None and "no bf16" in advice and "Tesla V100" in advice
    assert "A100" not in advice
    assert doctor._bf16_advice([a100]) == "bf16 is supported (compute capability >= 8.0): train in bf16."
