"""Load a GGUF export (what `tuneloop export --gguf` writes) through transformers' GGUF loader.

transformers reads the config, the tokenizer and the chat template from the GGUF alone (the HF
files next to it are not used) and dequantizes the weights to float, so this measures what the
file holds, as llama.cpp or Ollama would read it, but at PyTorch's speed, not llama.cpp's.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import TuneloopError
from tuneloop.models.formats import GGUF_FILE
from tuneloop.models.loading import pick_device, pick_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _gguf_file(folder: Path) -> str:
    if not (Path(folder) / GGUF_FILE).is_file():
        raise TuneloopError(
            f"'{folder}' has no {GGUF_FILE}", hint="export with `tuneloop export REF --gguf f16`"
        )
    return GGUF_FILE  # the `gguf` package transformers reads it with is a core dependency


def load_gguf_model(folder: Path, device: str = "auto") -> PreTrainedModel:
    import transformers
    from transformers import AutoModelForCausalLM

    name, device = _gguf_file(folder), pick_device(device)
    transformers.utils.logging.disable_progress_bar()
    # transformers' per-tensor dequantizing bar is a bare tqdm that the switch above does not reach
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=pick_dtype(device))
    return model.to(device).eval()


def load_gguf_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=_gguf_file(folder))
