"""What this machine can do for tuneloop: hardware, drivers, library versions and missing extras.

`collect()` gathers a `DoctorReport` (printed by `tuneloop doctor`); `detect_gpus()` is the GPU probe
that `tuneloop plan` reuses. Everything here diagnoses and never raises for a missing or broken
component: a missing driver, tool or package is a finding, not an error.

GPUs are found through NVML (`pynvml`, from nvidia-ml-py), else `nvidia-smi`, else `torch.cuda`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import paths

# Distribution names (not import names): versions come from metadata, never from importing.
KEY_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "torchao",
    "liger-kernel",
    "pyarrow",
    "datasketch",
    "fsspec",
    "s3fs",
    "pyspark",
    "mlflow",
    "fastapi",
    "uvicorn",
    "prometheus-client",
    "openai",
    "gguf",
    "safetensors",
    "tokenizers",
    "nvidia-ml-py",
    "vllm",
)
EXTRAS = ("train", "data", "serve", "spark", "eval", "gpu", "dev", "all")
LOW_DISK_BYTES = 20 * 1000**3
BF16_MIN_CAPABILITY = (8, 0)
MIB = 1024 * 1024
_SMI_FIELDS = ("index", "name", "memory.total", "memory.free", "compute_cap", "driver_version")
_SMI_TIMEOUT_S = 15


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes
    compute_capability: str | None  # "9.0"


@dataclass
class SystemInfo:
    platform: str
    kernel: str
    python: str
    cpu_model: str
    cores_logical: int
    cores_physical: int | None
    ram_total: int  # bytes
    ram_available: int  # bytes
    home: str
    disk_path: str  # the existing folder that was measured (home itself may not exist yet)
    disk_free: int  # bytes


@dataclass
class TorchInfo:
    version: str | None
    cuda: str | None  # CUDA version torch was built for; None for a CPU build
    cuda_available: bool


@dataclass
class MissingRequirement:
    requirement: str  # as declared, e.g. "peft>=0.13"
    name: str
    installed: str | None  # None when not installed at all; else the version that does not fit


@dataclass
class ExtraStatus:
    ok: bool
    missing: list[MissingRequirement]
    pip_command: str | None  # the command that fixes it; None when nothing is missing


@dataclass
class DoctorReport:
    system: SystemInfo
    torch: TorchInfo
    driver_version: str | None
    gpu_source: str | None  # "nvml", "nvidia-smi", "torch" or None when no probe answered
    gpus: list[GpuInfo]
    libraries: dict[str, str | None]
    extras: dict[str, ExtraStatus]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data with stable keys (what `tuneloop doctor --json` prints)."""
        return asdict(self)


# ---------------------------------------------------------------- GPUs


def _gpus_from_nvml() -> tuple[list[GpuInfo], str | None] | None:
    """GPUs and driver version through NVML; None when NVML is not installed or does not answer."""
    try:
        import pynvml  # optional: the 'gpu' extra ships it
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None  # no driver / no libnvidia-ml: let the next probe try
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    index=i,
                    # Old nvidia-ml-py releases return bytes.
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory_total=int(mem.total),
                    memory_free=int(mem.free),
                    compute_capability=f"{major}.{minor}",
                )
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        return gpus, driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _run_smi(fields: tuple[str, ...]) -> list[dict[str, str]] | None:
    """Rows of `nvidia-smi --query-gpu`, one dict per GPU; None when the tool is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    rows = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        # GPU names contain no commas, so a plain split is safe for this query.
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(fields):
            return None
        rows.append(dict(zip(fields, values, strict=True)))
    return rows


def _na(value: str | None) -> str | None:
    return None if value is None or value.strip("[]").upper() in {"N/A", "", "NOT SUPPORTED"} else value


def _capability(value: str | None) -> tuple[int, int] | None:
    """(major, minor) from "9.0"; None for a missing or malformed value."""
    match = re.fullmatch(r"(\d+)\.(\d+)", (value or "").strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _gpus_from_smi() -> tuple[list[GpuInfo], str | None] | None:
    """GPUs and driver version from `nvidia-smi`; None when it is missing, fails or prints garbage."""
    rows = _run_smi(_SMI_FIELDS)
    if rows is None:
        # Drivers older than ~510 reject the compute_cap field; ask again without it.
        rows = _run_smi(tuple(f for f in _SMI_FIELDS if f != "compute_cap"))
    if rows is None:
        return None
    try:
        gpus = [
            GpuInfo(
                index=int(row["index"]),
                name=row["name"],
                memory_total=int(float(row["memory.total"])) * MIB,  # nounits: MiB
                memory_free=int(float(row["memory.free"])) * MIB,
                compute_capability=row["compute_cap"] if _capability(row.get("compute_cap")) else None,
            )
            for row in rows
        ]
    except (KeyError, ValueError):
        return None
    driver = _na(rows[0].get("driver_version")) if rows else None
    return gpus, driver


def _gpus_from_torch() -> list[GpuInfo] | None:
    """GPUs as torch sees them; the last resort, since it creates a CUDA context per device."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            cap = f"{props.major}.{props.minor}"
            gpus.append(GpuInfo(i, props.name, int(total), int(free), cap))
        return gpus
    except Exception:
        return None


def _driver_from_proc() -> str | None:
    """The kernel module's version, readable even when neither NVML nor nvidia-smi is installed."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+([\d.]+)", text)
    return match.group(1) if match else None


def _probe_gpus() -> tuple[list[GpuInfo], str | None, str | None]:
    """(gpus, driver version, which probe answered), trying NVML, nvidia-smi, then torch."""
    for source, probe in (("nvml", _gpus_from_nvml), ("nvidia-smi", _gpus_from_smi)):
        try:
            found = probe()
        except Exception:
            found = None
        if found is not None:
            gpus, driver = found
            return _visible(gpus), driver or _driver_from_proc(), source
    gpus = _gpus_from_torch()
    if gpus is None:
        return [], _driver_from_proc(), None
    # torch already applies CUDA_VISIBLE_DEVICES and renumbers, so no filtering here.
    return gpus, _driver_from_proc(), "torch"


def _visible(gpus: list[GpuInfo]) -> list[GpuInfo]:
    """Keep the GPUs CUDA_VISIBLE_DEVICES exposes, as training will see them (NVML and nvidia-smi ignore it)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return gpus
    wanted = [v.strip() for v in raw.split(",") if v.strip()]
    if not all(v.isdigit() for v in wanted):
        return gpus  # UUIDs or MIG ids: too many forms to match reliably, so report all GPUs
    by_index = {g.index: g for g in gpus}
    return [by_index[int(v)] for v in wanted if int(v) in by_index]


def detect_gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs this process may use; [] when there are none. Never raises."""
    try:
        return _probe_gpus()[0]
    except Exception:
        return []


# ---------------------------------------------------------------- system


def cpu_model() -> str:
    """The CPU's marketing name; platform.processor() is often empty on Linux, so read /proc first."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _existing_parent(path: Path) -> Path:
    """The nearest folder that exists, since TUNELOOP_HOME is created lazily."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(os.sep)


def _system_info() -> SystemInfo:
    import psutil

    home = paths.home()
    disk_path = _existing_parent(home)
    mem = psutil.virtual_memory()
    return SystemInfo(
        platform=platform.platform(),
        kernel=platform.release(),
        python=platform.python_version(),
        cpu_model=cpu_model(),
        cores_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cores_physical=psutil.cpu_count(logical=False),
        ram_total=int(mem.total),
        ram_available=int(mem.available),
        home=str(home),
        disk_path=str(disk_path),
        disk_free=int(shutil.disk_usage(disk_path).free),
    )


def _torch_info() -> TorchInfo:
    """torch's version and CUDA build; importing torch is justified here, the CUDA facts need it."""
    try:
        import torch
    except Exception:
        return TorchInfo(version=None, cuda=None, cuda_available=False)
    try:
        available = bool(torch.cuda.is_available())
    except Exception:
        available = False
    return TorchInfo(version=torch.__version__, cuda=torch.version.cuda, cuda_available=available)


# ---------------------------------------------------------------- libraries and extras


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, from its metadata; None when not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {name: installed_version(name) for name in KEY_LIBRARIES}


def check_requirement(requirement: str) -> MissingRequirement | None:
    """None when `requirement` (e.g. "peft>=0.13") is satisfied, else what is missing or wrong."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion

    req = Requirement(requirement)
    spec = str(req).split(";")[0].strip()  # drop the `extra == ...` marker for display
    version = installed_version(req.name)
    if version is None:
        return MissingRequirement(spec, req.name, None)
    try:
        fits = req.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        fits = True  # a non-PEP 440 version cannot be judged; do not cry wolf
    return None if fits else MissingRequirement(spec, req.name, version)


def extra_requirements(extra: str, dist: str = "tuneloop") -> list[str]:
    """The requirements an extra adds, expanding self-references such as `tuneloop[train,data]`."""
    from packaging.requirements import Requirement

    found: list[str] = []
    for raw in metadata.requires(dist) or []:
        req = Requirement(raw)
        if req.marker is None or not req.marker.evaluate({"extra": extra}):
            continue
        if req.name == dist:
            for sub in sorted(req.extras):
                found += [r for r in extra_requirements(sub, dist) if r not in found]
        elif raw not in found:
            found.append(raw)
    return found


def check_extras(extras: tuple[str, ...] = EXTRAS) -> dict[str, ExtraStatus]:
    """For each extra: what is missing or at a wrong version, and the pip command that fixes it."""
    statuses = {}
    for extra in extras:
        missing = [m for r in extra_requirements(extra) if (m := check_requirement(r)) is not None]
        pip = f"pip install 'tuneloop[{extra}]'" if missing else None
        statuses[extra] = ExtraStatus(ok=not missing, missing=missing, pip_command=pip)
    return statuses


# ---------------------------------------------------------------- advice and the report


def _bf16_advice(gpus: list[GpuInfo]) -> str | None:
    if not gpus:
        return None
    old = [g for g in gpus if (cc := _capability(g.compute_capability)) and cc < BF16_MIN_CAPABILITY]
    if not old:
        return "bf16 is supported (compute capability >= 8.0): train in bf16."
    names = ", ".join(f"GPU {g.index} ({g.name}, {g.compute_capability})" for g in old)
    return f"no bf16 on {names}: compute capability < 8.0, train in fp16 instead."


def advise(report: DoctorReport) -> list[str]:
    """Short findings a user should act on, most important first."""
    notes: list[str] = []
    t = report.torch
    if t.version is None:
        notes.append("torch is not installed: nothing can train or run; pip install tuneloop.")
    if not report.gpus:
        notes.append("No NVIDIA GPU found: training runs on the CPU, practical only for tiny models.")
    if t.cuda and report.driver_version is None:
        notes.append(f"torch is built for CUDA {t.cuda} but no NVIDIA driver was found.")
    if report.gpus and t.version and not t.cuda:
        notes.append(f"GPUs are present but torch {t.version} is a CPU build: install a CUDA build of torch.")
    elif report.gpus and t.cuda and not t.cuda_available:
        notes.append(f"torch (CUDA {t.cuda}) cannot use the GPUs: is driver {report.driver_version} too old?")
    if (bf16 := _bf16_advice(report.gpus)) is not None:
        notes.append(bf16)
    if report.system.disk_free < LOW_DISK_BYTES:
        gb = report.system.disk_free / 1000**3
        notes.append(f"Low disk: {gb:.1f} GB free at {report.system.disk_path}; models and runs need 20 GB+.")
    return notes


def collect() -> DoctorReport:
    """Everything `tuneloop doctor` reports; never raises for a missing or broken component."""
    try:
        gpus, driver, source = _probe_gpus()
    except Exception:
        gpus, driver, source = [], None, None
    try:
        extras = check_extras()
    except metadata.PackageNotFoundError:
        extras = {}  # running from a source tree without an installed tuneloop distribution
    report = DoctorReport(
        system=_system_info(),
        torch=_torch_info(),
        driver_version=driver,
        gpu_source=source,
        gpus=gpus,
        libraries=library_versions(),
        extras=extras,
    )
    report.warnings = advise(report)
    if not extras:
        report.warnings.append("tuneloop is not installed as a package: extras were not checked.")
    return report
