"""The interface the server uses: `submit(...)` -> async iterator of outputs, `abort(id)`, `stats()`.

The engine steps in one background thread (model compute blocks, so it must not run on the event
loop). Nothing on the event loop ever waits for that thread's lock: a step holds it for a whole
GPU step, and an event loop blocked there stops every other stream (measured: 8.5 of 14 s of the
server thread at 128 streams went to `submit` waiting on it). So `submit` and `abort` leave their
request in an inbox the stepping thread drains between steps, `stats` reads a copy refreshed by that
thread, and each step's outputs cross back to an event loop in one call_soon_threadsafe per loop.
Closing the iterator early (the HTTP client went away) aborts the request and frees its KV blocks
before the next step. A request the engine failed inside a step (and only that one: engine.py)
ends its stream with `RequestFailedError`; the other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from tuneloop.engine.engine import EngineStats, LLMEngine
from tuneloop.engine.outputs import Generation, RequestFailedError, RequestOutput
from tuneloop.engine.sampling import SamplingParams

log = logging.getLogger("tuneloop.engine")


class EngineClosedError(RuntimeError):
    """The engine was shut down: nothing will step a new request (the server answers 503)."""


class RequestStream:
    """The outputs of one request, as `submit` returns them (an async iterator).

    Closing it before the request finished (`aclose`, a cancelled read, or dropping it) aborts the
    request, so its KV blocks are freed before the next step: also when it was never read (an async
    generator's `finally` would not run then, and the request would generate to its end)."""

    def __init__(self, engine: StreamingEngine, request_id: str, queue: asyncio.Queue):
        self.engine, self.request_id, self._queue = engine, request_id, queue
        self._done = False  # finished, failed, or aborted: nothing more to read or to abort

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # the reader was cancelled (its client went away)
            self._abort()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.finished
        if item.error is not None:  # the engine failed this request alone
            raise RequestFailedError(item.error)
        return item

    async def aclose(self) -> None:
        self._abort()

    def _abort(self) -> None:
        if not self._done:
            self._done = True
            self.engine.abort(self.request_id)

    def __del__(self) -> None:  # dropped unfinished, unclosed (abort only queues a message: safe here)
        with contextlib.suppress(Exception):  # (at interpreter exit the engine may be half gone)
            self._abort()


class StreamingEngine:
    """What the server sees of an engine, in-process or not: a stream per request, settled from the
    engine's side on the caller's event loop. Subclasses provide `submit` and `abort`."""

    async def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        raise NotImplementedError

    def abort(self, request_id: str) -> bool:
        raise NotImplementedError

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams | None = None, **kw: Any
    ) -> Generation:
        """The whole output of one request (convenience for non-streaming callers)."""
        stream = await self.submit(prompt_ids, params, **kw)
        whole = Generation(kw.get("request_id") or "")
        async for out in stream:
            whole.request_id = out.request_id
            whole.add(out)
        return whole

    def _stream(self, request_id: str, queue: asyncio.Queue) -> RequestStream:
        return RequestStream(self, request_id, queue)

    def _settle(self, future: asyncio.Future, request_id: str | None, error: BaseException | None) -> None:
        """On the caller's event loop: hand submit() its request id (or error)."""
        if future.cancelled():  # the caller gave up while it was being added: nobody reads the stream
            if request_id is not None and error is None:
                self.abort(request_id)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(request_id)


class AsyncEngine(StreamingEngine):
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        # filled by event loops, drained by the stepping thread between steps (deque ops are atomic)
        self._inbox: deque[tuple[tuple, asyncio.AbstractEventLoop, asyncio.Queue, asyncio.Future]] = deque()
        self._aborts: deque[str] = deque()
        self._stats = engine.stats()
        self._stats_at = time.monotonic()
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
        if self._stop:
            raise EngineClosedError("the engine is shut down")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        added: asyncio.Future = loop.create_future()
        self._inbox.append(((prompt_ids, params, request_id, priority, lora), loop, queue, added))
        self._work.set()
        # the stepping thread adds it between two steps (a ValueError comes back through the future);
        # meanwhile this event loop keeps serving the other streams
        return self._stream(await added, queue)

    def abort(self, request_id: str) -> bool:
        """Abort before the next step (never waits for the step running now); False if unknown or done."""
        known = request_id in self._queues
        if known:
            self._aborts.append(request_id)
            self._work.set()
        return known

    def stats(self) -> EngineStats:
        """The engine's counters: fresh when it is idle, else as of the last step (at most ~0.25 s old)."""
        if self._lock.acquire(blocking=False):
            try:
                self._stats = self.engine.stats()
            finally:
                self._lock.release()
        return self._stats

    # adapters: blocking (between two steps); call from a worker thread, never the event loop

    def load_lora(self, name: str, folder: Any) -> None:
        with self._lock:
            self.engine.load_lora(name, folder)

    def unload_lora(self, name: str) -> None:
        with self._lock:
            self.engine.unload_lora(name)

    def lora_names(self) -> set[str]:
        with self._lock:
            return set(self.engine.lora.adapters) if self.engine.lora else set()

    def shutdown(self) -> None:
        """Stop stepping; requests still in flight end with EngineClosedError instead of hanging."""
        with self._lock:
            self._stop = True
        self._work.set()
        self._thread.join(timeout=10)
        with self._lock:
            closed = EngineClosedError("the engine was shut down while the request ran")
            self._fail_all(closed)
            while self._inbox:  # submitted but never added: their submit() raises
                _, loop, _, added = self._inbox.popleft()
                call_soon(loop, self._settle, added, None, EngineClosedError("the engine is shut down"))

    # ------------------------------------------------------------ the stepping thread

    def _loop(self) -> None:
        while not self._stop:
            self._work.wait()
            with self._lock:
                batches: dict[asyncio.AbstractEventLoop, list] = {}
                self._admit(batches)
                if not self.engine.has_unfinished():
                    self._work.clear()
                    if self._inbox or self._aborts:  # arrived between the drain and the clear
                        self._work.set()
                    self._send(batches)
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # the engine isolates a request's failure (engine.py): this
                    # one is not any request's, so it fails every waiting request, loudly
                    log.exception("engine step failed")
                    self._fail_all(e)
                    self._send(batches)
                    continue
                for out in outputs:
                    target = self._queues.get(out.request_id)
                    if out.finished:
                        self._queues.pop(out.request_id, None)
                    if target is not None:
                        batches.setdefault(target[0], []).append((target[1].put_nowait, out))
                now = time.monotonic()
                if now - self._stats_at > 0.25:
                    self._stats, self._stats_at = self.engine.stats(), now
            self._send(batches)

    def _admit(self, batches: dict[asyncio.AbstractEventLoop, list]) -> None:
        """Add the submitted requests and apply the aborts (under the lock, between two steps)."""
        while self._inbox:
            args, loop, queue, added = self._inbox.popleft()
            if added.cancelled():  # the caller stopped waiting before it was added (a disconnect)
                continue
            try:
                seq = self.engine.add_request(*args)
            except Exception as e:  # a refused request: its submit() raises this
                batches.setdefault(loop, []).append((self._settle, added, None, e))
                continue
            self._queues[seq.request_id] = (loop, queue)
            batches.setdefault(loop, []).append((self._settle, added, seq.request_id, None))
        while self._aborts:
            request_id = self._aborts.popleft()
            target = self._queues.pop(request_id, None)
            if self.engine.abort(request_id) and target is not None:
                out = RequestOutput(request_id, [], finished=True, finish_reason="abort")
                batches.setdefault(target[0], []).append((target[1].put_nowait, out))

    @staticmethod
    def _send(batches: dict[asyncio.AbstractEventLoop, list]) -> None:
        """One wake-up per event loop per step, not one per token."""
        for loop, calls in batches.items():
            call_soon(loop, run_all, calls)

    def _fail_all(self, error: Exception) -> None:
        if not isinstance(error, EngineClosedError):
            error = RuntimeError(f"engine step failed: {error}")
        for request_id, (loop, queue) in list(self._queues.items()):
            self.engine.abort(request_id)
            call_soon(loop, queue.put_nowait, error)
        self._queues.clear()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """`fn(*args)` on `loop`, from any thread; nothing if the loop is closed (nobody waits there)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def run_all(calls: list[tuple]) -> None:
    """Many calls in one event-loop wake-up (one step's outputs for every stream of that loop)."""
    for fn, *args in calls:
        fn(*args)
