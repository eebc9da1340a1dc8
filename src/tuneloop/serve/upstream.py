"""The remote `EngineClient`: an OpenAI-compatible upstream (vLLM, another tuneloop) over httpx.

Every choice is one streamed upstream request, so `n`, stop strings and usage work the same as on a
local engine; upstream errors come back with their status and message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tuneloop.models.tool_calls import ToolCallDelta
from tuneloop.serve.client import Delta, EngineLoad, GenerateRequest, TokenLogprob
from tuneloop.serve.errors import APIError

EXTENSION_DEFAULTS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}  # vLLM sampling extensions, off


class UpstreamClient:
    version: str | None = None  # the upstream answers for itself (its own /v1/models)
    max_num_seqs = 0  # not known here: the gate admits its default
    tokenizer = None  # the upstream's tokenizer is not ours

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url, self.model = base_url.rstrip("/"), model
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.active = 0

    async def start(self) -> None:
        try:
            r = await self.http.get("/models")
        except httpx.HTTPError as e:
            raise RuntimeError(f"upstream {self.base_url} is unreachable: {e}") from None
        if r.status_code >= 400:
            raise RuntimeError(f"upstream {self.base_url}/models answered {r.status_code}")

    async def prepare(self, request: GenerateRequest) -> None:
        """Not sized here (its tokenizer is not ours): the gateway estimates the prompt's tokens."""
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        path, body = self._body(request)
        if request.echo:  # echo is answered whole (servers do not stream it)
            yield await self._whole(path, {**body, "stream": False, "stream_options": None}, request)
            return
        try:
            async with self.http.stream("POST", path, json=body) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise APIError(r.status_code, _message(r), "upstream_error")
                async for delta in self._deltas(r, request):
                    yield delta
        except httpx.HTTPError as e:
            raise APIError(502, f"upstream request failed: {type(e).__name__}", "upstream_error") from None

    def _body(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            # not given: the upstream's default (vLLM: what its context leaves after the prompt)
            "max_tokens": None if request.fit_context else request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": request.stop or None,
            "stream": True,
            "stream_options": {"include_usage": True},
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
        }
        # OpenAI's own fields, passed on unchanged (the gateway checked them); unset ones are left out,
        # so an upstream that lacks a feature is only asked for it when the client asked
        passed = {
            "logit_bias": request.logit_bias,
            "response_format": request.response_format,
            "tools": request.tools if request.messages is not None else None,
            "tool_choice": request.tool_choice if request.messages is not None else None,
            "parallel_tool_calls": request.parallel_tool_calls if request.messages is not None else None,
        }
        body.update({k: v for k, v in passed.items() if v is not None})
        # vLLM's sampling extensions, only when set off their neutral value (an OpenAI upstream refuses them)
        for name, neutral in EXTENSION_DEFAULTS.items():
            if getattr(request, name) != neutral:
                body[name] = getattr(request, name)
        k = request.logprobs
        if request.messages is not None:
            extra = {"logprobs": True, "top_logprobs": k} if k is not None else {}
            return "/chat/completions", {**body, "messages": request.messages, **extra}
        prompt = request.prompt if request.prompt_ids is None else request.prompt_ids
        return "/completions", {**body, "prompt": prompt, "echo": request.echo, "logprobs": k}

    async def _whole(self, path: str, body: dict[str, Any], request: GenerateRequest) -> Delta:
        try:
            r = await self.http.post(path, json=body)
        except httpx.HTTPError as e:
            raise APIError(502, f"upstream request failed: {type(e).__name__}", "upstream_error") from None
        if r.status_code >= 400:
            raise APIError(r.status_code, _message(r), "upstream_error")
        data = r.json()
        choice, usage = data["choices"][0], data.get("usage") or {}
        n_prompt = usage.get("prompt_tokens", 0)
        entries = _completion_logprobs(choice.get("logprobs"))
        prompt = request.prompt or ""  # token-id prompts: the echoed text comes back whole
        text = choice.get("text") or ""
        return Delta(
            text=text[len(prompt) :] if text.startswith(prompt) else text,
            logprobs=entries[n_prompt:],
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=n_prompt,
            completion_tokens=usage.get("completion_tokens", 0),
            echo_text=prompt,
            echo_logprobs=entries[:n_prompt],
        )

    async def _deltas(self, r: httpx.Response, request: GenerateRequest) -> AsyncIterator[Delta]:
        finish: str | None = None
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
                logprobs = _chunk_logprobs(choice.get("logprobs"))
                calls = _tool_call_pieces((choice.get("delta") or {}).get("tool_calls"))
                if text or logprobs or calls:
                    yield Delta(text=text, logprobs=logprobs, tool_calls=calls)
            if chunk.get("usage"):
                u = chunk["usage"]
                yield Delta(
                    finish_reason=finish or "stop",
                    prompt_tokens=u.get("prompt_tokens", 0),
                    completion_tokens=u.get("completion_tokens", 0),
                )
                return
        yield Delta(finish_reason=finish or "stop")

    def load(self) -> EngineLoad | None:
        return None  # the upstream exports its own metrics

    async def close(self) -> None:
        await self.http.aclose()


def _tool_call_pieces(pieces: list[dict[str, Any]] | None) -> list[ToolCallDelta]:
    """The upstream's `delta.tool_calls`, as they came (index, id, name, a fragment of arguments)."""
    out = []
    for p in pieces or []:
        fn = p.get("function") or {}
        out.append(
            ToolCallDelta(int(p.get("index", 0)), p.get("id"), fn.get("name"), fn.get("arguments") or "")
        )
    return out


def _chunk_logprobs(lp: dict[str, Any] | None) -> list[TokenLogprob]:
    """Logprobs of a chat chunk ({"content": [...]}) or a completion chunk ({"tokens": ...})."""
    if not lp:
        return []
    if "content" in lp:
        return [
            TokenLogprob(
                e["token"], e["logprob"], {t["token"]: t["logprob"] for t in e.get("top_logprobs") or []}
            )
            for e in lp["content"] or []
        ]
    return _completion_logprobs(lp)


def _completion_logprobs(lp: dict[str, Any] | None) -> list[TokenLogprob]:
    if not lp:
        return []
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [
        TokenLogprob(t, v, dict(top or {}))
        for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=False)
    ]


def _message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"upstream answered {r.status_code}"
