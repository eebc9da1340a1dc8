"""One poisoned request among 32 concurrent streams through the real gateway fails alone.

The engine's model runner is made to raise for every step that holds the poisoned request (marked
by its seed) once it has streamed a couple of tokens; a seed outside what the engine takes is the
other poison, refused at the door. The official `openai` client runs 32 streams at once: the 31
others must end normally with the same text as without the poison, the poisoned one gets a 400 or
an error in its own stream, and the server keeps serving. The engine in the server process and in
its own process.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tuneloop.serve import ServeConfig

from .conftest import run_server
from .fault_engines import client as engine_client

POISON_SEED = 4242
N = 32


@pytest.fixture(scope="module", params=[False, True], ids=["in-process", "engine-process"])
def server(tiny_llama, tmp_path_factory, request):
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "tiny", "model": str(tiny_llama)}],
            "auth": {"enabled": False, "database_url": f"sqlite:///{tmp_path_factory.mktemp('db')}/serve.db"},
            "log": {"path": str(tmp_path_factory.mktemp("log") / "requests.jsonl")},
        }
    )
    local = engine_client(tiny_llama, request.param, poison_seed=POISON_SEED)
    with run_server(cfg, {"tiny": local}) as s:
        yield s


async def stream(client: openai.AsyncOpenAI, i: int, seed: int | None) -> tuple[str, str | None] | Exception:
    """(text, finish reason) of one streamed completion, or the error it ended with."""
    try:
        chunks = await client.completions.create(
            model="tiny",
            prompt=f"Request number {i} says",
            max_tokens=12,
            temperature=0,
            seed=seed,
            stream=True,
        )
        text, reason = "", None
        async for chunk in chunks:
            for c in chunk.choices:
                text += c.text
                reason = c.finish_reason or reason
        return text, reason
    except openai.APIError as e:
        return e


async def run_all(url: str, poison: int | None, seed: int) -> list:
    """N streams at once; stream `poison` (if any) carries `seed`."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    async with client:
        return await asyncio.gather(*(stream(client, i, seed if i == poison else None) for i in range(N)))


def test_a_request_failing_in_the_engine_fails_alone_in_its_stream(server):
    got = asyncio.run(run_all(server.url, poison=7, seed=POISON_SEED))
    bad = got.pop(7)
    assert isinstance(bad, openai.APIError) and "engine failed this request" in str(bad), bad
    clean = asyncio.run(run_all(server.url, poison=None, seed=0))  # the server keeps serving
    clean.pop(7)
    assert got == clean
    assert all(isinstance(g, tuple) and g[1] == "length" and g[0] for g in got)


def test_a_seed_the_engine_cannot_take_is_a_400_and_the_others_go_on(server):
    got = asyncio.run(run_all(server.url, poison=3, seed=2**64))
    bad = got.pop(3)
    assert isinstance(bad, openai.BadRequestError) and "seed" in str(bad), bad
    assert all(isinstance(g, tuple) and g[1] == "length" for g in got)


def test_a_non_streaming_request_failing_in_the_engine_is_a_500_for_itself_only(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError, match="engine failed this request"):
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=12, temperature=0, seed=POISON_SEED
        )
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
