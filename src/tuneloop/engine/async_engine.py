"""The interface the server uses: `submit(...)` -> async iterator of outputs, `abort(id)`, `stats()`.

The engine steps in one background thread (model compute blocks, so it must not run on the event
loop); outputs cross back to each request's asyncio queue with call_soon_threadsafe. Closing the
iterator early (the HTTP client went away) aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from tuneloop.engine.engine import EngineStats, LLMEngine
from tuneloop.engine.outputs import RequestOutput
from tuneloop.engine.sampling import SamplingParams

log = logging.getLogger("tuneloop.engine")


class EngineClosedError(RuntimeError):
    """The engine was shut down: nothing will step a new request (the server answers 503)."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="tuneloop-engine", daemon=True)
        self._thread.start()

    async def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream outputs of one request; raises ValueError at once for a request the engine refuses,
        EngineClosedError after `shutdown()` (a queued request would never be answered)."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._stop:
                raise EngineClosedError("the engine is shut down")
            seq = self.engine.add_request(prompt_ids, params, request_id, priority, lora)
            self._queues[seq.request_id] = (asyncio.get_running_loop(), queue)
        self._work.set()
        return self._stream(seq.request_id, queue)

    async def _stream(self, request_id: str, queue: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the consumer stopped early: free the request's blocks now
                self.abort(request_id)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            aborted = self.engine.abort(request_id)
            target = self._queues.pop(request_id, None)
        if aborted and target is not None:
            loop, queue = target
            out = RequestOutput(request_id, [], [], finished=True, finish_reason="abort")
            loop.call_soon_threadsafe(queue.put_nowait, out)
        return aborted

    def stats(self) -> EngineStats:
        with self._lock:
            return self.engine.stats()

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams | None = None, **kw: Any
    ) -> RequestOutput:
        """The final output of one request (convenience for non-streaming callers)."""
        last = None
        async for out in await self.submit(prompt_ids, params, **kw):
            last = out
        assert last is not None
        return last

    def shutdown(self) -> None:
        """Stop stepping; requests still in flight end with EngineClosedError instead of hanging."""
        with self._lock:
            self._stop = True
        self._work.set()
        self._thread.join(timeout=10)
        with self._lock:
            self._fail_all(EngineClosedError("the engine was shut down while the request ran"))

    # ------------------------------------------------------------ the stepping thread

    def _loop(self) -> None:
        while not self._stop:
            self._work.wait()
            with self._lock:
                if not self.engine.has_unfinished():
                    self._work.clear()
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a failed step fails every waiting request, loudly
                    log.exception("engine step failed")
                    self._fail_all(e)
                    continue
                targets = [(out, self._queues.get(out.request_id)) for out in outputs]
                for out in outputs:
                    if out.finished:
                        self._queues.pop(out.request_id, None)
            for out, target in targets:
                if target is not None:
                    target[0].call_soon_threadsafe(target[1].put_nowait, out)

    def _fail_all(self, error: Exception) -> None:
        if not isinstance(error, EngineClosedError):
            error = RuntimeError(f"engine step failed: {error}")
        for request_id, (loop, queue) in list(self._queues.items()):
            self.engine.abort(request_id)
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting there
                loop.call_soon_threadsafe(queue.put_nowait, error)
        self._queues.clear()
