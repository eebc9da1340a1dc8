"""Ollama's `Modelfile` for a GGUF export: FROM the file, the chat template in Ollama's Go syntax, stops.

Ollama does not run Jinja. A ChatML template (SmolLM2's, the tiny test models') is recognized by
rendering it, and written as Ollama's ChatML template, with the template's default system prompt
(if it adds one) as SYSTEM; any other template is left to Ollama, which reads the one embedded in
the GGUF (`tokenizer.chat_template`) and maps it to a known template of its own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tuneloop.models.formats import GGUF_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
_TURNS = [("system", "S1"), ("user", "U1"), ("assistant", "A1"), ("user", "U2")]


def _chatml(turns: list[tuple[str, str]]) -> str:
    return (
        "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"
    )


def _render(tokenizer: PreTrainedTokenizerBase, turns: list[tuple[str, str]]) -> str | None:
    messages = [{"role": role, "content": text} for role, text in turns]
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception:  # a template that raises on a plain conversation is not ChatML
        return None


def chatml_system(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """None when the template is not ChatML; else the default system prompt it adds ('' for none)."""
    if not getattr(tokenizer, "chat_template", None) or _render(tokenizer, _TURNS) != _chatml(_TURNS):
        return None
    bare = _render(tokenizer, _TURNS[1:]) or ""
    if bare == _chatml(_TURNS[1:]):
        return ""
    found = re.fullmatch(
        r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", bare.removesuffix(_chatml(_TURNS[1:])), re.S
    )
    return found.group(1) if found else None


def stop_tokens(tokenizer: PreTrainedTokenizerBase, chatml: bool) -> list[str]:
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    stops += ["<|im_start|>", "<|im_end|>"] if chatml else []
    return list(dict.fromkeys(stops))


def modelfile(tokenizer: PreTrainedTokenizerBase) -> str:
    system = chatml_system(tokenizer)
    lines = [
        "# Ollama: `ollama create NAME -f Modelfile` in this folder, then `ollama run NAME`",
        f"FROM ./{GGUF_FILE}",
    ]
    if system is None:
        lines.append(
            "# no TEMPLATE: Ollama uses the chat template embedded in the GGUF (tokenizer.chat_template)"
        )
    else:
        lines.append(f'TEMPLATE """{CHATML_GO}"""')
        if system and '"""' not in system:
            lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_tokens(tokenizer, system is not None)]
    return "\n".join(lines) + "\n"
