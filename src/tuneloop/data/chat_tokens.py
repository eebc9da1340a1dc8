"""Token counts of chat rows as the trainer sees them: rendered with the tokenizer's chat template.

A preference row counts its longer side (prompt + chosen or prompt + rejected), since both must
fit. A row's `tools` and tool calls are rendered as training and serving render them
(`models.chat`). Without a chat template (or if the template refuses a row) the message contents are
counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.models.chat import render_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def has_chat_template(tokenizer_dir: str) -> bool:
    folder = Path(tokenizer_dir)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


@lru_cache(maxsize=2)
def _hf_tokenizer(tokenizer_dir: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer  # only chat kinds pay for importing transformers

    return AutoTokenizer.from_pretrained(tokenizer_dir)


class ChatCounter:
    """`count(texts)`: token counts of texts with the dataset's tokenizer (`Chunker.count`)."""

    def __init__(self, tokenizer_dir: str, count: Callable[[list[str]], list[int]]):
        self.count_texts = count
        self.hf = _hf_tokenizer(tokenizer_dir) if has_chat_template(tokenizer_dir) else None

    def count(self, row: dict[str, Any]) -> int:
        if "messages" in row:
            sequences = [row["messages"]]
        else:
            sequences = [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
        return max(self._count(messages, row.get("tools")) for messages in sequences)

    def _count(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        if self.hf is not None:
            try:
                text = render_chat(self.hf, messages, tools, add_generation_prompt=False)
            except Exception:  # templates raise their own errors (e.g. "roles must alternate")
                text = None
            if text is not None:
                return self.count_texts([text])[0]
        contents = [m["content"] for m in messages if m["content"]]
        return sum(self.count_texts(contents)) if contents else 0


def counted_as(kind: str, tokenizer_dir: str) -> str:
    """How token counts were made, for the manifest."""
    if kind == "pretrain":
        return "chunk text"
    return (
        "chat template applied" if has_chat_template(tokenizer_dir) else "message contents (no chat template)"
    )
