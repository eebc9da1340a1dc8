"""Batched greedy generation of the reply to each conversation's last user turn.

Prompts are rendered with the model's chat template (generation prompt on) and left-padded, so
every row's new tokens start at the same column. Greedy decoding makes the output deterministic,
and a batch must give what a plain one-prompt `model.generate` gives (the test's oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.perplexity import render_chat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to its last user turn, and the assistant reply that follows it."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise TuneloopError("no user turn to answer", hint="an SFT row needs a user turn before the reply")
    reply = next((m["content"] for m in messages[last_user + 1 :] if m["role"] == "assistant"), None)
    if reply is None:
        raise TuneloopError(
            "no assistant reply after the last user turn", hint="end the row with the reference reply"
        )
    return messages[: last_user + 1], reply


def tool_prompt_and_reference(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A tool row's prompt (everything before its final assistant turn: tool results included) and
    that turn, whose `tool_calls` (none: it answers in text) are the reference."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0 or messages[last - 1]["role"] not in ("user", "tool"):
        raise TuneloopError(
            "no final assistant turn after a user or tool turn to score",
            hint="end a tool row with the reference assistant turn (its tool_calls, or its text answer)",
        )
    return messages[:last], messages[last]


def greedy_kwargs(tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    """Generation settings that override whatever sampling defaults the model's folder carries."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        num_beams=1,
        pad_token_id=pad,
    )


def generate_replies(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
) -> list[str]:
    """The greedy reply to each prompt (a conversation ending with a user turn), in order; with
    `tools` (one list or None per prompt) rendered as the server renders them."""
    tools = list(tools) if tools is not None else [None] * len(prompts)
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        replies += _generate_batch(model, tokenizer, prompts[start:end], max_new_tokens, tools[start:end])
    return replies


def _generate_batch(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    max_new: int,
    tools: Sequence[list[dict[str, Any]] | None],
) -> list[str]:
    import torch  # here, not at the top: the CLI imports this package at start, and torch takes seconds

    texts = [render_chat(tokenizer, p, True, t) for p, t in zip(prompts, tools, strict=True)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must start at the same column in every row
    try:
        pad_id = greedy_kwargs(tokenizer, max_new)["pad_token_id"]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = pad_id
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(**enc, **greedy_kwargs(tokenizer, max_new))
    new = out[:, enc["input_ids"].shape[1] :]  # (B, new tokens)
    return [_reply(tokenizer, row, t is not None) for row, t in zip(new, tools, strict=True)]


def _reply(tokenizer: Any, ids: Any, keep_markers: bool) -> str:
    """A reply's text. With tools, only end/padding tokens are removed: a tool-call marker may be a
    special token (Qwen2.5's `<tool_call>`), and the parser must see it."""
    if not keep_markers:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for token in {tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token} - {None}:
        text = text.split(token)[0] if token == tokenizer.eos_token else text.replace(token, "")
    return text.strip()
