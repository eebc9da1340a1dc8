"""The engine in its own process: same streams as in-process, refusals, aborts, adapters, and a dead process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.async_engine import EngineClosedError
from tuneloop.engine.process import EngineProcess, EngineProcessError
from tuneloop.errors import TuneloopError

from .test_engine import GREEDY, prompts
from .test_lora import make_adapter

LONG = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def proc(tiny_llama):
    eng = EngineProcess(tiny_llama, block_size=4, kv_cache_gib=0.01)
    yield eng
    eng.shutdown()


def settle(eng, **want):
    """Wait for the engine's idle stats (sent when it goes idle) to show `want`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = eng.stats()
        if all(getattr(s, k) == v for k, v in want.items()):
            return s
        time.sleep(0.02)
    raise AssertionError(f"stats never reached {want}: {eng.stats()}")


def test_concurrent_streams_equal_the_in_process_engine(proc, tiny_llama):
    ps = prompts(5, seed=40)
    expected = [o.token_ids for o in LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01)
                .generate(ps, GREEDY)]  # fmt: skip
    before = proc.stats().generated_tokens

    async def one(p):
        outs = [out async for out in await proc.submit(p, GREEDY)]
        last = outs[-1]
        assert last.finished and last.finish_reason == "length" and last.num_prompt_tokens == len(p)
        assert all(len(o.new_token_ids) == 1 for o in outs)  # each step's new token, never the list again
        return [t for o in outs for t in o.new_token_ids]

    async def main():
        return await asyncio.gather(*(one(p) for p in ps))

    assert asyncio.run(main()) == expected
    settle(proc, generated_tokens=before + 5 * 12, running=0)


def test_refused_requests_raise_at_submit_and_the_engine_goes_on(proc):
    async def main():
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await proc.submit([5, 10**9], GREEDY)
        # refused where it is submitted (it could not be encoded as a typed message): no pipe, no hang
        with pytest.raises(ValueError, match=r"prompt_ids must be integers \(token ids\), got 1.5"):
            await proc.submit([5, 1.5], GREEDY)
        with pytest.raises(ValueError, match="outside the vocabulary: -1"):
            await proc.submit([5, -1], GREEDY)
        with pytest.raises(ValueError, match="params must be SamplingParams, got dict"):
            await proc.submit([5, 6], {"temperature": 0})
        with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'"):
            await proc.submit([5, 6], GREEDY, lora="nope")
        stream = await proc.submit([5, 6, 7], LONG, request_id="dup")
        with pytest.raises(ValueError, match="already in use"):
            await proc.submit([5, 6, 7], GREEDY, request_id="dup")
        await stream.aclose()
        return await proc.generate([5, 6, 7], GREEDY)

    assert len(asyncio.run(main()).token_ids) == 12


def test_closing_the_stream_aborts_the_request_in_the_engine_process(proc):
    async def main():
        stream = await proc.submit(prompts(1, lengths=(30,))[0], LONG)
        async for out in stream:
            assert not out.finished
            break  # the client went away after its first token
        await stream.aclose()

    asyncio.run(main())
    settle(proc, running=0, waiting=0, kv_usage=0.0)


def test_adapters_load_serve_and_unload_through_the_process(proc, tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path / "a", 3, ["q_proj", "v_proj"])
    p = prompts(1, seed=41)[0]
    with pytest.raises(ValueError, match="not loaded"):
        proc.unload_lora("a")
    proc.load_lora("a", tmp_path / "a")
    assert proc.lora_names() == {"a"}
    eng = LLMEngine.from_pretrained(tiny_llama, block_size=4, kv_cache_gib=0.01)
    eng.load_lora("a", tmp_path / "a")
    expected = eng.generate([p], GREEDY, lora=["a"])[0].token_ids
    base = eng.generate([p], GREEDY)[0].token_ids
    got = asyncio.run(proc.generate(p, GREEDY, lora="a")).token_ids
    assert got == expected and got != base
    proc.unload_lora("a")
    assert proc.lora_names() == set()


def test_a_model_folder_that_cannot_load_is_a_clear_error_not_a_hang(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    t = time.monotonic()
    with pytest.raises((TuneloopError, EngineProcessError)) as e:
        EngineProcess(tmp_path, kv_cache_gib=0.01)
    assert str(tmp_path) in str(e.value) or "config" in str(e.value).lower()
    assert time.monotonic() - t < 120


def test_a_dead_engine_process_fails_requests_in_flight_and_refuses_new_ones(tiny_llama):
    eng = EngineProcess(tiny_llama, block_size=4, kv_cache_gib=0.01)

    async def main():
        stream = await eng.submit([5, 6, 7], LONG)
        first = await stream.__anext__()
        assert first.new_token_ids
        os.kill(eng.pid, signal.SIGKILL)  # out of memory, a crash in a kernel
        with pytest.raises(EngineProcessError, match="exited with code -9"):
            async for _ in stream:
                pass
        with pytest.raises(EngineClosedError):
            await eng.submit([5, 6, 7], GREEDY)

    asyncio.run(asyncio.wait_for(main(), 60))
    eng.shutdown()  # after a death: returns at once, raises nothing


def test_shutdown_ends_streams_in_flight(tiny_llama):
    eng = EngineProcess(tiny_llama, block_size=4, kv_cache_gib=0.01)

    async def main():
        stream = await eng.submit([5, 6, 7], LONG)
        await stream.__anext__()
        await asyncio.to_thread(eng.shutdown)
        with pytest.raises(EngineClosedError):
            async for _ in stream:
                pass
        with pytest.raises(EngineClosedError):
            await eng.submit([5, 6, 7], GREEDY)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_ctrl_c_to_the_process_group_leaves_the_engine_process_running(proc):
    os.kill(proc.pid, signal.SIGINT)  # the terminal sends it to every process of the group
    time.sleep(0.3)
    assert asyncio.run(proc.generate([5, 6, 7], GREEDY)).finish_reason == "length"


def test_the_engine_process_exits_when_the_server_process_dies(tiny_llama):
    import subprocess
    import sys

    code = ("import sys, time\nfrom tuneloop.engine.process import EngineProcess\n"
            "if __name__ == '__main__':\n"
            f"    e = EngineProcess({str(tiny_llama)!r}, block_size=4, kv_cache_gib=0.01)\n"
            "    print(e.pid, flush=True)\n    time.sleep(120)\n")  # fmt: skip
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(server.stdout.readline())
        server.kill()  # no shutdown(): the pipe's other end just closes
        server.wait(10)
        # its exit took 14-21 s on a 2-core box at load 13 (before and after issue 19's changes)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:  # gone, or a zombie nobody reaps (a container's PID 1 may not): no orphan holds the GPU
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            except FileNotFoundError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the engine process outlived its server")
    finally:
        server.kill()
