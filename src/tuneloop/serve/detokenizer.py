"""Incremental detokenization and text stop strings, for one streamed choice.

Decoding token by token breaks multi-byte characters and BPE word boundaries, so (as vLLM) we decode
a short window and emit only text that is final: not ending in a replacement character, and not a
possible beginning of a stop string (held back until it is known not to be one).
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = stop or []
        self.ids: list[int] = []
        self._prefix = self._read = 0  # window start, and end of what was already decoded
        self.text = ""  # all final text so far (before stop-string truncation)
        self._emitted = 0  # characters of `text` handed out
        self.stopped = False  # a stop string was found; the caller ends the request

    def add(self, new_ids: list[int]) -> str:
        """Feed new token ids; return the text that can be shown now."""
        self.ids.extend(new_ids)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the request (held-back characters included)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        for s in self.stop:
            at = self.text.find(s, max(0, self._emitted - len(s) + 1))
            if at != -1 and at < end:
                end, self.stopped = at, True
        if not self.stopped and not final and self.stop:
            end -= self._held_back()
        if end <= self._emitted:
            return ""
        piece = self.text[self._emitted : end]
        self._emitted = end
        return piece

    def _held_back(self) -> int:
        """How many trailing characters could start a stop string."""
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
