"""A real OpenAI-compatible HTTP teacher for the synthesis tests (aiohttp on 127.0.0.1, a thread of
its own), answering deterministically from the passage in the prompt, or misbehaving on request."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PASSAGE = re.compile(r'"""\n(.*?)\n"""', re.S)
DOC = re.compile(r'(?:Passage from "|来自「)(.*?)(?:"|」)')
Behave = Callable[["FakeTeacher", dict[str, Any]], Awaitable[web.Response]]


def completion(text: str) -> web.Response:
    return web.json_response(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "teacher",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    )


def passage(body: dict[str, Any]) -> tuple[str, str, bool]:
    """(document name, passage, asked in Chinese) of a synthesis prompt."""
    user = body["messages"][-1]["content"]
    return DOC.search(user).group(1), PASSAGE.search(user).group(1), "用中文" in user


def qa_reply(body: dict[str, Any]) -> str:
    """One grounded item: the passage's first line of text as the answer, asked about in the
    prompt's language, with one rewording."""
    _, text, zh = passage(body)
    first = next(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    if zh:
        q = f"关于“{first[:12]}”，文档怎么说？"
        para = [f"请问{q}"]
    else:
        q = f"What is said about {' '.join(first.split()[:4])}?"
        para = [f"Tell me: {q}"]
    return json.dumps(
        {"items": [{"kind": "fact", "question": q, "answer": first, "paraphrases": para}]}, ensure_ascii=False
    )


async def good(teacher: FakeTeacher, body: dict[str, Any]) -> web.Response:
    return completion(qa_reply(body))


@dataclass
class FakeTeacher:
    behave: Behave = good
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def calls_for(self, doc_part: str) -> int:
        return sum(doc_part in passage(b)[0] for b in self.calls)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        return await self.behave(self, body)


@contextmanager
def serve(behave: Behave = good) -> Iterator[FakeTeacher]:
    teacher = FakeTeacher(behave)
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", teacher.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    teacher.url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield teacher
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
