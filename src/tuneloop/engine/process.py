"""`EngineProcess`: `AsyncEngine`'s interface, with the `LLMEngine` stepping in a process of its own.

Why: in one process the engine's stepping thread and the server's event loop (chat template,
detokenizer, SSE writer, auth, request log) share one GIL. On an H100 at 128 streams the server's
per-token Python work cut the engine's throughput by 73% and pushed the P99 time to first token to
16 s (BENCHMARKS.md, "Online, through the HTTP gateway"). With the engine in its own process (vLLM
V1's EngineCore design) the step loop's host work and the server's run in parallel, and they
exchange one message per step over a pipe.

The protocol is messages.py: typed msgspec Structs tagged by a `Kind`, a batch of them per pipe
message (msgpack, no pickle). A step's outputs carry new tokens only, so a step's message does not
grow with the output length. A request the engine failed alone (`error` set) ends its stream with
`RequestFailedError`, as in-process; `Failed` is for a step that failed as a whole.

The server side never waits on the engine from an event loop: messages leave through a writer
thread (a full pipe blocks that thread, not the event loop), and a reader thread hands each step's
outputs to every event loop in one wake-up, as `AsyncEngine` does. If the engine process dies, every
request in flight ends with an error at once and later submits raise `EngineClosedError` (503).
A request is encoded where it is submitted: one the engine could not take (ids that are not token
ids, parameters out of range) raises there, as `LLMEngine.add_request` would, and never reaches the pipe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import multiprocessing as mp
import queue as queue_mod
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tuneloop.engine.async_engine import EngineClosedError, StreamingEngine, call_soon, run_all
from tuneloop.engine.engine import EngineStats, LLMEngine, check_request
from tuneloop.engine.messages import (
    Abort,
    Add,
    Added,
    Call,
    Codec,
    ErrorInfo,
    Failed,
    Fatal,
    FromEngine,
    LoadLora,
    LoraNames,
    Ready,
    Reply,
    Stats,
    Step,
    Stop,
    ToEngine,
    UnloadLora,
)
from tuneloop.engine.outputs import RequestOutput
from tuneloop.engine.sampling import SamplingParams
from tuneloop.errors import TuneloopError

log = logging.getLogger("tuneloop.engine")

STATS_EVERY_S = 0.25  # how stale `stats()` may be while the engine is busy
BURST_GAP_S, BURST_MAX_S = 0.001, 0.005  # from idle: wait for more requests while they keep coming, briefly
CALL_TIMEOUT_S = 600.0  # loading an adapter reads its weights: generous, but never forever


class EngineProcessError(RuntimeError):
    """The engine process failed to start or died; the message says how."""


class EngineProcess(StreamingEngine):
    def __init__(
        self, folder: str | Path, start_timeout_s: float = 900.0, build: Any = None, **engine_kwargs: Any
    ):
        """`LLMEngine.from_pretrained(folder, **engine_kwargs)` in the child; or `build()` there, a picklable
        callable returning an engine-like object (benchmarks pass a stand-in engine this way)."""
        ctx = mp.get_context("spawn")  # a forked child cannot use CUDA when the parent has touched it
        self._conn, child = ctx.Pipe(duplex=True)
        self._codec = Codec(FromEngine)
        build = build or functools.partial(_from_pretrained, str(folder), engine_kwargs)
        self._proc = ctx.Process(
            target=_engine_main, args=(child, build), name="tuneloop-engine", daemon=True
        )
        self._proc.start()
        child.close()
        self._stats = self._wait_ready(str(folder), start_timeout_s)
        self._closed = False
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, asyncio.Future]] = {}
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count()
        self._outbox: queue_mod.SimpleQueue[bytes | None] = queue_mod.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="tuneloop-engine-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="tuneloop-engine-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _wait_ready(self, folder: str, timeout_s: float) -> EngineStats:
        if not self._conn.poll(timeout_s):
            self._proc.kill()
            raise EngineProcessError(f"the engine process did not load {folder} within {timeout_s:.0f} s")
        try:
            (msg,) = self._codec.decode(self._conn.recv_bytes())
        except (EOFError, OSError):
            self._proc.join(5)
            raise EngineProcessError(
                f"the engine process exited with code {self._proc.exitcode} while loading {folder} "
                "(its log above says why)"
            ) from None
        if isinstance(msg, Fatal):
            self._proc.join(10)
            if msg.error.kind == "TuneloopError":  # a user mistake (bad folder, impossible cache size)
                raise TuneloopError(msg.error.message, hint=msg.error.hint)
            raise EngineProcessError(
                f"the engine process failed to load {folder}: {msg.error.kind}: {msg.error.message}"
            )
        assert isinstance(msg, Ready), f"the engine process began with {type(msg).__name__}"
        return msg.stats

    # ------------------------------------------------------------ AsyncEngine's interface

    async def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        if request_id in self._queues or request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already in use")
        # what add_request refuses without knowing the model (the engine checks the vocabulary): here,
        # so that every message sent encodes (and a bad request is the caller's ValueError, a 400)
        prompt_ids, params = check_request(prompt_ids, params)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        message = self._codec.encode(Add(request_id, prompt_ids, params, priority, lora))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        added: asyncio.Future = loop.create_future()
        self._pending[request_id] = (loop, queue, added)
        self._outbox.put(message)
        return self._stream(await added, queue)

    def abort(self, request_id: str) -> bool:
        known = request_id in self._queues
        if known and not self._closed:
            self._outbox.put(self._codec.encode(Abort(request_id)))
        return known

    def stats(self) -> EngineStats:
        """As of the engine's last step (at most ~0.25 s old while busy; fresh when it went idle)."""
        return self._stats

    def load_lora(self, name: str, folder: str | Path) -> None:
        self._call(lambda call_id: LoadLora(call_id, name, str(folder)))

    def unload_lora(self, name: str) -> None:
        self._call(lambda call_id: UnloadLora(call_id, name))

    def lora_names(self) -> set[str]:
        return set(self._call(LoraNames) or ())

    def shutdown(self) -> None:
        """Stop the engine process; requests still in flight end with EngineClosedError."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(self._codec.encode(Stop()))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._outbox.put(None)  # ends the writer thread
        self._fail_all(EngineClosedError("the engine was shut down while the request ran"))
        with contextlib.suppress(OSError):
            self._conn.close()

    # ------------------------------------------------------------ the two threads

    def _call(self, make: Any) -> list[str] | None:
        """Send the call `make(call_id)` and wait for its reply (from a worker thread, never the event loop)."""
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        call_id = next(self._call_ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls[call_id] = future
        self._outbox.put(self._codec.encode(make(call_id)))
        return future.result(timeout=CALL_TIMEOUT_S)

    def _write(self) -> None:
        """Everything queued goes as one message: a burst of requests costs one write."""
        while True:
            batch = [self._outbox.get()]
            with contextlib.suppress(queue_mod.Empty):
                while batch[-1] is not None:
                    batch.append(self._outbox.get_nowait())
            stop = batch[-1] is None
            encoded = [m for m in batch if m is not None]
            try:
                if encoded:
                    self._conn.send_bytes(self._codec.join(encoded))
            except (OSError, ValueError):  # the engine process is gone: the reader reports it
                return
            if stop:
                return

    def _read(self) -> None:
        while True:
            try:
                batch = self._codec.decode(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            for msg in batch:
                self._dispatch(msg)
        if not self._closed:  # the process died under us (killed, out of memory, a crash in a kernel)
            self._closed = True
            self._proc.join(timeout=2)
            code = self._proc.exitcode
            log.error("the engine process exited with code %s; failing the requests in flight", code)
            self._fail_all(EngineProcessError(f"the engine process exited with code {code}"))

    def _dispatch(self, msg: FromEngine) -> None:
        match msg:
            case Step(outputs, stats):
                self._deliver(outputs)
                if stats is not None:
                    self._stats = stats
            case Added(request_id, error):
                self._added(request_id, error)
            case Stats(stats):
                self._stats = stats
            case Failed(message, request_ids):
                failure = RuntimeError(message)
                for request_id in request_ids:
                    target = self._queues.pop(request_id, None)
                    if target is not None:
                        call_soon(target[0], target[1].put_nowait, failure)
            case Reply(call_id, result, error):
                future = self._calls.pop(call_id, None)
                if future is not None:
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(_rebuild(error))
            case _:
                log.error("unexpected message from the engine process: %r", msg)

    def _added(self, request_id: str, error: ErrorInfo | None) -> None:
        loop, queue, future = self._pending.pop(request_id)
        if error is None:
            self._queues[request_id] = (loop, queue)
        call_soon(loop, self._settle, future, request_id, None if error is None else _rebuild(error))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            target = self._queues.get(out.request_id)
            if target is None:
                continue
            if out.finished:
                self._queues.pop(out.request_id, None)  # pop: shutdown() may have cleared it meanwhile
            batches.setdefault(target[0], []).append((target[1].put_nowait, out))
        for loop, calls in batches.items():  # one wake-up per event loop per step, not one per token
            call_soon(loop, run_all, calls)

    def _fail_all(self, error: BaseException) -> None:
        for loop, queue in list(self._queues.values()):
            call_soon(loop, queue.put_nowait, error)
        self._queues.clear()
        closed = EngineClosedError("the engine is shut down")
        for request_id, (loop, _, future) in list(self._pending.items()):
            call_soon(loop, self._settle, future, request_id, closed)
        self._pending.clear()
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(EngineClosedError("the engine is shut down"))
        self._calls.clear()


def _describe(e: BaseException) -> ErrorInfo:
    kind = "TuneloopError" if isinstance(e, TuneloopError) else type(e).__name__
    return ErrorInfo(kind, getattr(e, "message", None) or str(e), getattr(e, "hint", None))


def _rebuild(error: ErrorInfo) -> BaseException:
    if error.kind == "TuneloopError":
        return TuneloopError(error.message, hint=error.hint)
    if error.kind == "ValueError":  # a refused request: the server answers 400, as in-process
        return ValueError(error.message)
    return RuntimeError(f"{error.kind}: {error.message}")


# ---------------------------------------------------------------- the engine process


def _from_pretrained(folder: str, kwargs: dict[str, Any]) -> LLMEngine:
    return LLMEngine.from_pretrained(folder, **kwargs)


def _engine_main(conn: Any, build: Any) -> None:
    # Ctrl-C reaches the whole process group: the server shuts this process down through the pipe,
    # after its requests in flight (a KeyboardInterrupt here would fail them mid-step)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    codec = Codec(ToEngine)
    try:
        engine = build()
    except BaseException as e:  # the parent raises it: a bad folder is the user's to fix, not a hang
        with contextlib.suppress(OSError):
            conn.send_bytes(codec.encode_batch([Fatal(_describe(e))]))
        if not isinstance(e, Exception):
            raise
        return
    conn.send_bytes(codec.encode_batch([Ready(engine.stats())]))
    _Core(engine, conn, codec).run()


class _Core:
    """The loop in the engine process: drain the pipe, answer, step, send the step's outputs in one message."""

    def __init__(self, engine: Any, conn: Any, codec: Codec):
        self.engine, self.conn, self.codec = engine, conn, codec
        self.outputs: list[RequestOutput] = []  # for the next Step message (aborts, then the step's outputs)
        self.replies: list[Added | Reply | Failed | Stats] = []  # answers, sent before the next step
        self.stats_at = 0.0
        self.stop = False

    def run(self) -> None:
        idle_sent = True
        while not self.stop:
            busy = self.engine.has_unfinished()
            if not busy and not idle_sent:
                self.replies.append(Stats(self.engine.stats()))
                idle_sent = True
            try:
                self.send_replies()
                if busy or self.conn.poll(None):
                    self.drain()
                    # woken from idle: a burst (clients that all finished in the last step and ask
                    # again) is often still arriving; take it into one first step, not two
                    deadline = time.monotonic() + BURST_MAX_S
                    while not busy and time.monotonic() < deadline and self.conn.poll(BURST_GAP_S):
                        self.drain()
                self.send_replies()  # a new request learns it was accepted (or why not) before the step runs
            except (EOFError, OSError):  # the server process went away: nobody to serve
                return
            if self.stop:
                break
            if self.engine.has_unfinished():
                idle_sent = False
                self.step()
            if self.outputs or self.replies:
                try:
                    self.flush()
                except OSError:  # the server process went away mid-step
                    return

    def send_replies(self) -> None:
        if self.replies:
            self.conn.send_bytes(self.codec.encode_batch(self.replies))
            self.replies = []

    def drain(self) -> None:
        while self.conn.poll(0):
            for msg in self.codec.decode(self.conn.recv_bytes()):
                self.handle(msg)

    def handle(self, msg: ToEngine) -> None:
        match msg:
            case Add(request_id, prompt_ids, params, priority, lora):
                try:
                    self.engine.add_request(prompt_ids, params, request_id, priority, lora)
                    self.replies.append(Added(request_id))
                except Exception as e:
                    self.replies.append(Added(request_id, _describe(e)))
            case Abort(request_id):
                if self.engine.abort(request_id):
                    self.outputs.append(RequestOutput(request_id, [], True, "abort"))
            case LoadLora() | UnloadLora() | LoraNames():
                self.replies.append(self.call(msg))
            case Stop():
                self.stop = True

    def call(self, msg: Call) -> Reply:
        try:
            match msg:
                case LoadLora(call_id, name, folder):
                    self.engine.load_lora(name, folder)
                case UnloadLora(call_id, name):
                    self.engine.unload_lora(name)
                case LoraNames(call_id):
                    lora = self.engine.lora
                    return Reply(call_id, sorted(lora.adapters) if lora else [])
            return Reply(msg.call_id)
        except Exception as e:
            return Reply(msg.call_id, error=_describe(e))

    def step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # not any one request's (the engine isolates those): fail them all, loudly
            log.exception("engine step failed")
            ids = list(getattr(self.engine, "sequences", ()))
            for request_id in ids:
                self.engine.abort(request_id)
            self.replies.append(Failed(f"engine step failed: {e}", ids))
            return
        self.outputs.extend(outputs)

    def flush(self) -> None:
        batch: list[Added | Reply | Failed | Stats | Step] = list(self.replies)
        self.replies = []
        if self.outputs:
            now, stats = time.monotonic(), None
            if now - self.stats_at > STATS_EVERY_S:
                stats, self.stats_at = self.engine.stats(), now
            batch.append(Step(self.outputs, stats))
            self.outputs = []
        self.conn.send_bytes(self.codec.encode_batch(batch))
