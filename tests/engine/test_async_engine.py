"""The async interface the server uses: streaming, concurrency, abort on disconnect, stats."""

from __future__ import annotations

import asyncio

import pytest

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.async_engine import AsyncEngine

from .test_engine import GREEDY, prompts


@pytest.fixture
def aengine(tiny_llama):
    eng = AsyncEngine(LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01))
    yield eng
    eng.shutdown()


def test_concurrent_streams_equal_offline_generate(aengine, tiny_llama):
    ps = prompts(4, seed=20)
    expected = [
        o.token_ids
        for o in LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01).generate(ps, GREEDY)
    ]

    async def one(p):
        outs = [out async for out in await aengine.submit(p, GREEDY)]
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        assert all(len(o.new_token_ids) == 1 for o in outs)  # each step's new token, never the list again
        return [t for o in outs for t in o.new_token_ids]

    async def main():
        return await asyncio.gather(*(one(p) for p in ps))

    assert asyncio.run(main()) == expected
    assert aengine.stats().generated_tokens == 4 * 12


def test_closing_the_stream_aborts_and_frees_blocks(aengine):
    async def main():
        stream = await aengine.submit(
            prompts(1, lengths=(30,))[0], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        )
        async for out in stream:
            assert not out.finished
            break  # the client disconnects after the first token
        await stream.aclose()
        await asyncio.sleep(0.05)

    free_before = aengine.engine.blocks.num_free
    asyncio.run(main())
    assert aengine.stats().running == 0 and aengine.stats().waiting == 0
    assert aengine.engine.blocks.num_free >= free_before


def test_bad_request_fails_at_submit(aengine):
    async def main():
        await aengine.submit([], GREEDY)

    with pytest.raises(ValueError, match="must not be empty"):
        asyncio.run(main())


def test_explicit_abort_ends_the_stream_with_reason(aengine):
    async def main():
        stream = await aengine.submit(
            prompts(1)[0], SamplingParams(max_tokens=500, temperature=0, ignore_eos=True), request_id="r1"
        )
        first = await stream.__anext__()
        assert aengine.abort("r1") is True
        reasons = [out.finish_reason async for out in stream]
        return first, reasons

    first, reasons = asyncio.run(main())
    assert not first.finished and reasons[-1] == "abort"


def test_submit_after_shutdown_raises_and_in_flight_requests_end(tiny_llama):
    from tuneloop.engine.async_engine import EngineClosedError

    eng = AsyncEngine(LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01))
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def main():
        stream = await eng.submit(prompts(1, seed=3)[0], long)
        first = await stream.__anext__()  # running
        assert not first.finished
        await asyncio.get_running_loop().run_in_executor(None, eng.shutdown)
        with pytest.raises(EngineClosedError):
            async for _ in stream:  # ends with an error, never hangs
                pass
        with pytest.raises(EngineClosedError):
            await eng.submit(prompts(1, seed=4)[0], GREEDY)

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def hold_a_step(aengine, seconds: float) -> None:
    """Another thread holds the engine as a step that takes `seconds` would; returns once it holds it."""
    import threading
    import time

    held = threading.Event()

    def hold():
        with aengine._lock:
            held.set()
            time.sleep(seconds)

    threading.Thread(target=hold).start()
    held.wait()


def test_the_event_loop_never_waits_for_a_running_step(aengine):
    """submit/abort/stats return while the stepping thread holds the engine (a long GPU step)."""
    import time

    async def main():
        hold_a_step(aengine, 0.5)
        t = time.perf_counter()
        stats = aengine.stats()  # the last copy: no waiting
        pending = asyncio.ensure_future(aengine.submit(prompts(1)[0], GREEDY))
        await asyncio.sleep(0.05)  # the loop is free: this sleep is not stretched to the step's end
        free_for = time.perf_counter() - t
        assert not pending.done()  # added only once the step is over
        stream = await pending
        outs = [o async for o in stream]
        return stats, free_for, outs

    stats, free_for, outs = asyncio.run(main())
    assert free_for < 0.3 and outs[-1].finished and stats.steps >= 0


def test_a_caller_that_stops_waiting_in_submit_leaves_nothing_running(aengine):

    async def main():
        hold_a_step(aengine, 0.3)
        task = asyncio.ensure_future(
            aengine.submit(prompts(1)[0], SamplingParams(max_tokens=400, ignore_eos=True))
        )
        await asyncio.sleep(0.01)
        task.cancel()  # the HTTP client disconnected before the engine took the request
        await asyncio.sleep(0.6)

    asyncio.run(main())
    assert aengine.stats().running == 0 and aengine.stats().waiting == 0
