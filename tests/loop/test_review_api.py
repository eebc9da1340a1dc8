"""The admin API of the approval queue: list, approve (edited), reject; admin scope; clear errors."""

from __future__ import annotations

import httpx

from serve.conftest import run_server
from tuneloop.interactions.review import ReviewQueue
from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient
from tuneloop.serve.keys import KeyStore


def proposal(rid: str, chosen: str) -> dict:
    return {"response_id": rid, "request_id": f"req-{rid}", "source": "correction", "chosen": chosen,
            "rejected": "wrong", "prompt": [{"role": "user", "content": f"question {rid}?"}]}  # fmt: skip


def test_review_queue_over_the_admin_api():
    queue = ReviewQueue()
    queue.enqueue("bot", 1, [proposal(x, f"{x.upper()}.") for x in "abcd"])
    admin = {"Authorization": f"Bearer {KeyStore().create('ops', ['admin'])[0]}"}
    user = {"Authorization": f"Bearer {KeyStore().create('app', ['inference', 'feedback'])[0]}"}
    with run_server(ServeConfig.model_validate({"warmup": False}), {"bot": FakeClient()}) as s:
        url = f"{s.url}/admin/review"
        assert httpx.get(url, headers=user).status_code == 403
        assert httpx.get(url).status_code == 401
        items = httpx.get(url, params={"model": "bot"}, headers=admin).json()["data"]
        assert [i["answer"] for i in items] == ["A.", "B.", "C.", "D."] and items[0]["request_id"] == "req-a"
        a, b, c, d = (i["id"] for i in items)
        edited = httpx.post(f"{url}/{a}/approve", json={"answer": "A, edited."}, headers=admin).json()
        assert edited["status"] == "approved" and edited["edited"] == "A, edited."
        assert httpx.post(f"{url}/{b}/approve", headers=admin).json()["edited"] is None
        rejected = httpx.post(f"{url}/{c}/reject", json={"reason": "off topic"}, headers=admin).json()
        assert (rejected["status"], rejected["reason"]) == ("rejected", "off topic")
        again = httpx.post(f"{url}/{c}/approve", headers=admin)
        assert again.status_code == 409 and "already rejected" in again.json()["error"]["message"]
        assert httpx.post(f"{url}/999/approve", headers=admin).status_code == 404
        empty = httpx.post(f"{url}/{d}/approve", json={"answer": "  "}, headers=admin)
        assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
        assert httpx.get(url, params={"status": "bogus"}, headers=admin).status_code in (400, 422)
        assert httpx.get(url, params={"status": "approved"}, headers=admin).json()["data"][0]["id"] == a
    assert [i.status for i in queue.list("bot")] == ["approved", "approved", "rejected", "pending"]
    assert queue.get(a).reviewer != "anonymous"  # the approving key's id is recorded
