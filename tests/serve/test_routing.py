"""A/B and canary routes: weighted split, stickiness per user, shadow copies, live weight changes."""

from __future__ import annotations

import asyncio
import math

import httpx

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.routing import Route


def test_split_follows_the_weights_within_tolerance():
    route = Route("bot", (("a", 9.0), ("b", 1.0)))
    picks = [route.pick(f"user-{i}") for i in range(4000)]
    share = picks.count("b") / len(picks)
    sigma = math.sqrt(0.1 * 0.9 / len(picks))
    assert abs(share - 0.1) < 4 * sigma


def test_a_user_stays_on_one_variant():
    route = Route("bot", (("a", 1.0), ("b", 1.0)))
    assert all(len({route.pick(f"u{i}") for _ in range(5)}) == 1 for i in range(50))


def _config() -> ServeConfig:
    return ServeConfig.model_validate(
        {
            "models": [{"name": n, "model": "unused"} for n in ("a", "b", "mirror")],
            "routes": [
                {
                    "name": "bot",
                    "variants": [{"model": "a", "weight": 1}, {"model": "b", "weight": 0}],
                    "shadow": "mirror",
                }
            ],
            "auth": {"enabled": False},
        }
    )


def test_variant_in_header_metrics_and_shadow_gets_a_copy(serve):
    shadow = FakeClient()
    calls = []
    original = shadow.generate

    def counting(request):
        calls.append(request.request_id)
        return original(request)

    shadow.generate = counting
    with serve(_config(), {"a": FakeClient(), "b": FakeClient(), "mirror": shadow}) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "bot", "prompt": "x y", "user": "u1"})
        assert r.status_code == 200 and r.headers["x-tuneloop-variant"] == "a"
        assert r.headers["x-tuneloop-model"] == "bot"
        metrics = httpx.get(s.url + "/metrics").text
        assert 'vllm:e2e_request_latency_seconds_count{model_name="bot",variant="a"} 1.0' in metrics
        assert "bot" in [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
    assert calls and calls[0].startswith("shadow-")


def test_weight_change_applies_live_with_no_failed_requests(serve):
    with serve(
        _config(), {"a": FakeClient(delay_s=0.01), "b": FakeClient(delay_s=0.01), "mirror": FakeClient()}
    ) as s:

        async def load(c: httpx.AsyncClient, n: int) -> list[httpx.Response]:
            body = {"model": "bot", "prompt": "w " * 5}
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(n)))

        async def main() -> tuple[list, list]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                during = asyncio.create_task(load(c, 30))
                await asyncio.sleep(0.02)
                moved = await c.put("/admin/routes/bot", json={"variants": [{"model": "b", "weight": 1}]})
                assert moved.status_code == 200, moved.text
                return await during, await load(c, 10)

        during, after = asyncio.run(main())
        assert all(r.status_code == 200 for r in during + after)
        assert {r.headers["x-tuneloop-variant"] for r in after} == {"b"}
        bad = httpx.put(s.url + "/admin/routes/bot", json={"variants": [{"model": "nope"}]})
        assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"  # as in chat
        taken = httpx.put(s.url + "/admin/routes/a", json={"variants": [{"model": "b"}]})
        assert taken.status_code == 409 and taken.json()["error"]["param"] == "name"  # a served model's name
