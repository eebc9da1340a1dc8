"""`BatchEncoder`: prompt tokenization off the event loop, batched (vLLM's AsyncMicrobatchTokenizer idea).

Why: encoding a ~130-token chat prompt took 1.3 ms on the server's event loop (profile at 128
streams), so a burst of 128 new requests froze every stream for ~170 ms and each new request's
first token waited behind the others' encoding. Here the prompts that arrive in one turn of the
event loop are encoded in one `encode_batch` call on a worker thread: the tokenizers library releases
the GIL there, so the streams keep flowing, and it encodes a batch on several cores when
TOKENIZERS_PARALLELISM allows.

The ids are the same as `tokenizer.encode(text, add_special_tokens=...)` (tested), which is what a
slow (Python) tokenizer without a Rust backend still runs, on the same worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class BatchEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_batch: int = 16):
        self.tokenizer, self.max_batch = tokenizer, max_batch
        self.backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer of a fast one
        # one thread: batches run in arrival order, and the tokenizer is never used by two encodes at once
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tuneloop-tokenize"
        )
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[str, bool, asyncio.Future]]] = {}

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        if not pending:  # the first of this turn: encode them all once the turn's other callbacks ran
            loop.call_soon(self._flush, loop)
        pending.append((text, add_special_tokens, future))
        return await future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, [])
        # chunks, in order: the first requests of a burst of 128 start after 16 encodes, not after 128
        for start in range(0, len(pending), self.max_batch):
            batch = pending[start : start + self.max_batch]
            try:
                self._pool.submit(self._encode, batch, loop)
            except RuntimeError as e:  # closed (the model was unloaded): nobody waits long for an answer
                _settle(batch, None, e)

    def _encode(self, batch: list[tuple[str, bool, asyncio.Future]], loop: asyncio.AbstractEventLoop) -> None:
        for flag in (False, True):
            group = [item for item in batch if item[1] is flag]
            if not group:
                continue
            texts = [text for text, _, _ in group]
            try:
                if self.backend is not None:
                    ids = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=flag)]
                else:
                    ids = [self.tokenizer.encode(t, add_special_tokens=flag) for t in texts]
                result: tuple[list | None, BaseException | None] = (ids, None)
            except Exception as e:  # every waiting request gets the error, none hangs
                result = (None, e)
            with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(_settle, group, *result)


def _settle(
    group: list[tuple[str, bool, asyncio.Future]], ids: list | None, error: BaseException | None
) -> None:
    for i, (_, _, future) in enumerate(group):
        if future.done():  # the request was cancelled (client gone) while it was encoded
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(list(ids[i]))  # type: ignore[index]
