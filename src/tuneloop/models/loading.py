"""Loading HF model folders, and a plain `generate` reference path used by `tuneloop ask`.

This is the simple, slow oracle: the serving engine must give the same greedy tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING, Any, TypeAlias

from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tuneloop.models.onnx import OnnxCausalLM

# What the loaders return: an HF model, an HF model with a PEFT adapter, or an ONNX Runtime session
# called like one (tuneloop.models.load loads each format).
CausalLM: TypeAlias = "PreTrainedModel | PeftModel | OnnxCausalLM"


def pick_device(device: str = "auto") -> str:
    """`auto` -> cuda when visible, else cpu; anything else is checked before a model loads."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        raise TuneloopError(f"unknown device '{device}'", hint="use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise TuneloopError(
            f"device '{device}' asked for, but no CUDA GPU is available", hint="use cpu or auto"
        )
    return device


def pick_dtype(device: str) -> torch.dtype:
    """bf16 where the hardware does it well, float32 on CPU (bf16 matmuls are slow on many CPUs)."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_model(
    path: str | Path, device: str = "auto", dtype: torch.dtype | None = None, quiet: bool = True
) -> PreTrainedModel:
    import transformers
    from transformers import AutoModelForCausalLM

    if quiet:  # the per-tensor loading bar is noise for a 1-second load in a CLI
        transformers.utils.logging.disable_progress_bar()
    device = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or pick_dtype(device))
    return model.to(device).eval()


def chat_inputs(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], device: str
) -> dict[str, torch.Tensor]:
    if not tokenizer.chat_template:
        raise TuneloopError("this model's tokenizer has no chat template", hint="use an instruct/chat model")
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return {k: v.to(device) for k, v in enc.items()}


def stream_chat(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    """Yield the assistant's reply as text pieces while it is generated."""
    from transformers import TextIteratorStreamer

    inputs = chat_inputs(tokenizer, messages, str(model.device))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    kwargs = dict(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **sampling)
    kwargs["pad_token_id"] = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    failed: list[BaseException] = []

    def generate() -> None:
        try:
            model.generate(**kwargs)
        except BaseException as e:  # re-raised below: the streamer would otherwise wait forever
            failed.append(e)
            streamer.end()

    worker = Thread(target=generate, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if failed:
        raise failed[0]


def chat(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    **kwargs: float,
) -> str:
    return "".join(stream_chat(model, tokenizer, messages, **kwargs)).strip()
