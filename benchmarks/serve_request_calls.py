"""Python function calls per request through the whole gateway (ASGI app in-process, fake engine).

A count, not a time: on a shared, loaded machine CPU and wall times of one request vary by ±30% from
run to run, while the number of Python calls a request makes is exact, so two versions of the
request path compare to the call (the httpx client's calls are included; they are the same for both).

    python benchmarks/serve_request_calls.py                     # this tree
    git worktree add /tmp/before <REF>
    PYTHONPATH=/tmp/before/src python benchmarks/serve_request_calls.py   # the same for REF
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile

import httpx

from tuneloop.serve import ServeConfig, create_app
from tuneloop.serve.fake import FakeClient


async def calls_per_request(n: int) -> dict[str, int]:
    home = tempfile.mkdtemp()
    cfg = ServeConfig.model_validate(
        {
            "auth": {"enabled": False, "database_url": f"sqlite:///{home}/gw.db"},
            "log": {"path": f"{home}/r.jsonl"},
        }
    )
    app = create_app(cfg, {"fake": FakeClient()})
    out = {}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as c,
    ):
        for stream in (False, True):
            body = {"model": "fake", "prompt": "a b c d e f g h", "max_tokens": 8, "stream": stream}
            for _ in range(50):  # warm: imports, caches, the first log write
                (await c.post("/v1/completions", json=body)).raise_for_status()
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(n):
                await c.post("/v1/completions", json=body)
            profile.disable()
            out["stream" if stream else "json"] = round(pstats.Stats(profile).total_calls / n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    print(json.dumps(asyncio.run(calls_per_request(p.parse_args().requests))))


if __name__ == "__main__":
    main()
