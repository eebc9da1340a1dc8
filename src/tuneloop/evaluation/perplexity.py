"""Perplexity, and the one implementation of assistant-only loss masking (`sft_labels`).

SFT rows are scored on assistant tokens only, exactly as the trainer computes its loss: the
conversation is rendered with the model's own chat template (through `models.chat`, the renderer
the server uses, so a row's `tools` and tool calls are written as serving writes them), and the
tokens of each assistant turn's content, its tool calls and its end-of-turn marker are labels;
everything else (system, tools, user, tool results, role headers, padding) is -100. Text rows are scored on all tokens. The result is the token-weighted
mean negative log-likelihood over the whole set, and perplexity = exp(that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError
from tuneloop.models import chat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The conversation as the model's chat template writes it (with its tools, as the server renders
    them: `models.chat`); a template's refusal is a user error."""
    try:
        return chat.render_chat(tokenizer, messages, tools, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's raise_exception: "roles must alternate", "system role not supported"
        raise TuneloopError(
            f"the chat template refused this conversation: {type(e).__name__}: {str(e)[:200]}",
            hint="check the roles and their order against what this model's template supports",
        ) from None


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span each assistant turn adds to it.

    Rendered prefix by prefix: turn i spans from the end of `messages[:i]` + generation prompt
    (the role header) to the end of `messages[:i+1]`. That only means something if every rendering
    is a prefix of the full one, so it is checked; templates that rewrite earlier turns fail loudly.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TuneloopError("this model's tokenizer has no chat template", hint="use an instruct/chat model")
    full = render_chat(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render_chat(tokenizer, messages[:i], True, tools) if i else ""
        upto = render_chat(tokenizer, messages[: i + 1], False, tools)
        if not (full.startswith(upto) and upto.startswith(head)):
            raise TuneloopError(
                f"the chat template does not render conversations prefix by prefix (turn {i})",
                hint="assistant-only masking needs a template whose earlier turns do not change later",
            )
        spans.append((len(head), len(upto)))
    if not spans:
        raise TuneloopError("no assistant turn to score", hint="each SFT row needs an assistant reply")
    return full, spans


def sft_token_labels(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    *,
    last_turn_only: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[int]]:
    """Untruncated (input_ids, labels) of a conversation; labels are -100 outside assistant turns.

    `last_turn_only` labels only the final assistant turn (DPO: earlier turns are prompt).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TuneloopError(
            "assistant-only masking needs a fast tokenizer (offsets)", hint="pip install tokenizers"
        )
    text, spans = assistant_char_spans(tokenizer, messages, tools)
    # The template already holds BOS/special tokens: apply_chat_template tokenizes the same way.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    labels = [IGNORE] * len(ids)
    for start, end in spans[-1:] if last_turn_only else spans:
        inside = [j for j, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
        for j in _through_end_of_turn(inside, ids, special):
            labels[j] = ids[j]
    return ids, labels


def _through_end_of_turn(inside: list[int], ids: list[int], special: set[int]) -> list[int]:
    # A turn's span may end with formatting after the end-of-turn token (ChatML's "\n" after
    # <|im_end|>): generation stops at that token, so what follows it is not the model's to predict.
    last_special = max((k for k, j in enumerate(inside) if ids[j] in special), default=None)
    return inside if last_special is None else inside[: last_special + 1]


def sft_labels(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) truncated to `max_length`; labels are -100 except assistant content + end-of-turn."""
    ids, labels = sft_token_labels(tokenizer, messages)
    return ids[:max_length], labels[:max_length]


def text_labels(
    tokenizer: PreTrainedTokenizerBase, text: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a pretraining row: every token is a label."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return ids, list(ids)


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # token-weighted mean negative log-likelihood (nats)
    tokens: int  # scored tokens (labels other than -100, after the shift)
    truncated: int  # rows longer than max_length, cut before scoring

    def as_metrics(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "nll": self.nll, "scored_tokens": float(self.tokens)}


def perplexity(
    model: torch.nn.Module,
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 8,
    truncated: int = 0,
) -> Perplexity:
    """Token-weighted perplexity of (input_ids, labels) examples, in right-padded batches."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        nll, count = batch_nll(model, examples[start : start + batch_size])
        total_nll, total_tokens = total_nll + nll, total_tokens + count
    if total_tokens == 0:
        raise TuneloopError(
            "no tokens left to score (every labelled token was truncated away)", hint="raise max_length"
        )
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, truncated)


def batch_nll(model: torch.nn.Module, batch: Sequence[tuple[list[int], list[int]]]) -> tuple[float, int]:
    """Summed NLL and count of labelled tokens for one batch."""
    import torch  # here, not at the top: the CLI imports this module at start, and torch takes seconds

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    device = model.device
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
    # Token t predicts token t+1: (B, T-1, V) against (B, T-1).
    targets = labels[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"
    )
    return float(nll), int((targets != IGNORE).sum())
