"""Incremental detokenization and text stop strings, for one streamed choice.

Decoding token by token breaks multi-byte characters and BPE word boundaries, so text is emitted
only once it is final: not ending in a replacement character (half of a UTF-8 character), and not
a possible beginning of a stop string (held back until it is known not to be one).

The cost is O(1) per token, whatever the length of the answer: a fast (Rust) tokenizer decodes
through `tokenizers.decoders.DecodeStream` (one native call per engine output); any other
tokenizer through a short window of ids (vLLM's prefix-offset scheme); and stop strings are
searched only in the new text plus the last few characters before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase


class _StreamDecoder:
    """`DecodeStream` of the tokenizers library: the text of new ids, keeping its own short window."""

    def __init__(self, backend: Tokenizer):
        from tokenizers.decoders import DecodeStream  # here: tokenizers < 0.21 has none (ImportError)

        self.backend, self.stream = backend, DecodeStream(skip_special_tokens=True)

    def step(self, ids: list[int]) -> str:
        return self.stream.step(self.backend, ids) or ""


class _WindowDecoder:
    """Any tokenizer with `decode`: decode ids[prefix:] and ids[prefix:read], emit the difference."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0  # window start, and end of what was already emitted

    def step(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


def incremental_decoder(tokenizer: PreTrainedTokenizerBase) -> _StreamDecoder | _WindowDecoder:
    """The fastest decoder that gives exactly `tokenizer.decode(ids, skip_special_tokens=True)`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # transformers' cleanup (" ." -> ".") is not local to a token: only the window decoder applies it
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        try:
            return _StreamDecoder(backend)
        except ImportError:  # tokenizers < 0.21
            pass
    return _WindowDecoder(tokenizer)


class Detokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.decoder = incremental_decoder(tokenizer)
        self._ids: list[int] = []  # every id fed, for the one full decode at the end
        self._pieces: list[str] = []  # what the incremental decoder produced, in order
        self.stop = [s for s in stop or [] if s]
        self._keep = max(map(len, self.stop), default=1) - 1  # released characters a stop can span
        self._tail = ""  # the last `_keep` characters released
        self._pending = ""  # final text held back: it could begin a stop string
        self.stopped = False  # a stop string was found; the caller ends the request

    def add(self, new_ids: list[int]) -> str:
        """Feed new token ids; return the text that can be shown now."""
        piece = self.decoder.step(new_ids) if new_ids else ""
        self._ids.extend(new_ids)
        self._pieces.append(piece)
        if not self.stop:
            return piece
        return self._release(piece, final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the request (held-back characters included).

        Text the incremental decoder still held (valid characters decoded together with the start of
        a character whose bytes never completed) comes from one full decode; only the incomplete
        character itself (a trailing U+FFFD) is dropped."""
        if self.stopped:
            return ""
        full = self.tokenizer.decode(self._ids, skip_special_tokens=True) if self._ids else ""
        decoded = "".join(self._pieces)
        # only a continuation of what was produced: where a tokenizer's whole decode differs from its
        # streamed one (whitespace clean-up), nothing is appended rather than a misaligned tail
        rest = full[len(decoded) :].rstrip("\ufffd") if full.startswith(decoded) else ""
        self._pieces.append(rest)
        return self._release(rest, final=True) if self.stop else rest

    def _release(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        text = self._pending + piece  # not yet released
        window = self._tail + text
        end = len(text)
        for s in self.stop:  # a match must end in the new text (earlier ones were found before)
            at = window.find(s, max(0, len(self._tail) - len(s) + 1))
            if at != -1:
                end, self.stopped = min(end, max(0, at - len(self._tail))), True
        if not self.stopped and not final:
            end -= _held_back(window, self.stop, len(text))
        released, self._pending = text[:end], text[end:]
        if self._keep:
            self._tail = (self._tail + released)[-self._keep :]
        return released


def _held_back(text: str, stop: list[str], limit: int) -> int:
    """How many trailing characters of `text` (at most `limit`) could begin a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text), limit), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold
