"""The local `EngineClient`: a tuneloop `AsyncEngine` plus the model's tokenizer and chat template.

Several served names can share one engine (a base and its LoRA versions): each `LocalClient`
holds a `SharedEngine` and an optional adapter name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuneloop.engine import LLMEngine, SamplingParams
from tuneloop.engine.async_engine import AsyncEngine
from tuneloop.engine.outputs import RequestFailedError
from tuneloop.engine.process import EngineProcess
from tuneloop.models.chat import render_chat
from tuneloop.models.loading import load_tokenizer
from tuneloop.models.tool_calls import (
    NamedCallParser,
    StreamingToolParser,
    detect_tool_parser,
    streaming_parser,
)
from tuneloop.serve.adapters import AdapterCache
from tuneloop.serve.batch_encoder import BatchEncoder
from tuneloop.serve.client import Delta, EngineLoad, GenerateRequest, TokenLogprob
from tuneloop.serve.detokenizer import Detokenizer
from tuneloop.serve.errors import APIError
from tuneloop.serve.memory import release_freed_memory
from tuneloop.serve.structured import guided_decoding, tool_mode

log = logging.getLogger("tuneloop.serve")


@dataclass
class SharedEngine:
    """One loaded base model: the async engine and its tokenizer."""

    engine: Any  # tuneloop.engine.async_engine.AsyncEngine, or .process.EngineProcess (same interface)
    tokenizer: Any
    folder: Path
    closed: bool = False  # shut down (replaced by a live reload): a request here would never finish
    encoder: Any = None  # BatchEncoder: prompts tokenized off the event loop
    max_model_len: int = 0  # the engine's context (prompt + completion); 0: not known, not checked
    max_num_seqs: int = 0  # sequences the engine runs in one step (0: not known)
    vocab_size: int = 0  # the tokenizer's ids (added tokens included): a prompt's ids are below it
    adapters: AdapterCache | None = None  # its LoRA adapters: registered ones, resident ones (slots)

    def __post_init__(self) -> None:
        if self.encoder is None:
            self.encoder = BatchEncoder(self.tokenizer)
        stats = self.engine.stats()
        self.max_model_len = self.max_model_len or getattr(stats, "max_model_len", 0)
        self.max_num_seqs = self.max_num_seqs or getattr(stats, "max_num_seqs", 0)
        self.vocab_size = self.vocab_size or len(self.tokenizer)
        if self.adapters is None:
            self.adapters = AdapterCache.for_engine(self.engine, stats, Path(self.folder).name)

    @classmethod
    def load(cls, folder: Path, process: bool = False, **engine_kwargs: Any) -> SharedEngine:
        kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
        if process:  # the engine steps in its own process: no GIL shared with the HTTP server
            engine: AsyncEngine | EngineProcess = EngineProcess(folder, **kwargs)
        else:
            engine = AsyncEngine(LLMEngine.from_pretrained(folder, **kwargs))
        return cls(engine, load_tokenizer(folder), folder)


class LocalClient:
    def __init__(
        self,
        shared: SharedEngine,
        lora: str | None = None,
        max_prompt_tokens: int = 32768,
        tool_parser: str | None = None,
    ):
        self.shared, self.lora, self.max_prompt_tokens = shared, lora, max_prompt_tokens
        self.tokenizer = shared.tokenizer
        # serve.yaml's `tool_parser`, else the format the chat template shows (None: not recognised)
        self.tool_parser = tool_parser or detect_tool_parser(shared.tokenizer, _model_type(shared.folder))
        self.source: tuple[Path, Path | None] | None = None  # (base, adapter) folders it serves
        self.version: str | None = None  # what answers: "NAME/VERSION" for a registry reference
        self.active = 0  # requests admitted or generating, so a replaced client closes only once drained

    @property
    def max_num_seqs(self) -> int:
        """Sequences the engine batches in one step: the gateway's default admission (app._gate)."""
        return self.shared.max_num_seqs

    async def start(self) -> None:
        """Warm-up: one short generation, so the first user does not pay for lazy initialisation."""
        request = GenerateRequest(request_id=f"warmup-{uuid.uuid4().hex}", prompt="Hello", max_tokens=1)
        async for _ in self.generate(request):
            pass

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self.shared.closed:  # the gateway holds clients until drained; never hang if that slips
            raise APIError(503, "this model version was unloaded by a live reload; retry", "model_reloaded")
        prompt_ids = await self._encode_prompt(request)
        max_tokens = self._max_tokens(len(prompt_ids), request)
        detok = Detokenizer(self.tokenizer, request.stop)
        calls = self._tool_parser(request)
        if self.lora is not None:  # in a slot of the engine until the request ends (adapters.py)
            await self.shared.adapters.acquire(self.lora)
        try:
            stream = await self._submit(prompt_ids, request, max_tokens)
        except BaseException:
            self._release_adapter()
            raise
        self.active += 1
        try:
            first, completion_tokens = True, 0
            async for out in stream:  # each output carries the step's new tokens only
                text = detok.add(out.new_token_ids)
                completion_tokens += len(out.new_token_ids)
                delta = Delta(
                    text=text,
                    logprobs=self._logprobs(out.new_token_ids, out.logprobs, request),
                    completion_tokens=completion_tokens,  # a running count (what a stopped request used)
                    prompt_tokens=len(prompt_ids),  # on every delta too: a 499 is logged with it
                )
                if first and request.echo:
                    # with prompt logprobs asked, the engine computes every prompt position (such a
                    # request bypasses the prefix cache, chunked prefills included) and returns
                    # them with the first output token
                    delta.echo_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
                    delta.echo_logprobs = self._prompt_logprobs(prompt_ids, out.prompt_logprobs, request)
                first = False
                if out.finished or detok.stopped:
                    delta.text += detok.finish()
                    delta.finish_reason = "stop" if detok.stopped else (out.finish_reason or "stop")
                    delta.prompt_tokens, delta.completion_tokens = len(prompt_ids), completion_tokens
                    delta.cached_tokens = out.num_cached_tokens
                    if calls is not None:
                        _read_calls(calls, delta, last=True)
                    yield delta
                    return
                if calls is not None:
                    _read_calls(calls, delta)
                yield delta
        except RequestFailedError as e:  # the engine failed this request alone; the others go on
            raise APIError(500, str(e), "engine_error") from None
        finally:
            self.active -= 1
            try:
                await stream.aclose()  # early exit (stop string, client gone) aborts the engine request
            finally:
                self._release_adapter()

    def _tool_parser(self, request: GenerateRequest) -> StreamingToolParser | None:
        """The parser of this request's output (None: plain text); a 400 when the model's format is unknown."""
        mode = tool_mode(request.tools, request.tool_choice)
        if mode.named is not None:
            return NamedCallParser(mode.named)
        if mode.parser is None:
            return None
        if mode.parser == "auto":
            if self.tool_parser is None:
                raise APIError(
                    400,
                    "this model's chat template writes tool calls in a format tuneloop does not recognise; "
                    "set `tool_parser` (hermes or llama3_json) for it in serve.yaml, or send tool_choice "
                    '"required" or a named function (guided, any model)',
                    "tool_parser_unknown",
                    "tools",
                )
            return streaming_parser(self.tool_parser)
        return streaming_parser(mode.parser)

    def _release_adapter(self) -> None:
        if self.lora is not None:
            self.shared.adapters.release(self.lora)

    async def prepare(self, request: GenerateRequest) -> GenerateRequest:
        """The request as the engine will run it (`EngineClient.prepare`): the prompt as ids, max_tokens within
        the context, and the 400s `generate` would give, now. A token quota reserves exactly that, and
        `generate` does not tokenize it again."""
        if self.shared.closed:
            raise APIError(503, "this model version was unloaded by a live reload; retry", "model_reloaded")
        ids = await self._encode_prompt(request)
        max_tokens = self._max_tokens(len(ids), request)
        return replace(request, prompt_ids=ids, max_tokens=max_tokens, fit_context=False)

    async def _encode_prompt(self, request: GenerateRequest) -> list[int]:
        """The prompt's ids; the tokenizing runs on the shared BatchEncoder's thread, not the event loop."""
        if request.prompt_ids is not None:
            return self._checked(self._in_vocabulary(list(request.prompt_ids)))
        text, special = self._prompt_text(request)
        return self._checked(await self.shared.encoder.encode(text, special))

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        """Synchronous `_encode_prompt` (the same ids), for callers outside an event loop."""
        if request.prompt_ids is not None:
            return self._checked(self._in_vocabulary(list(request.prompt_ids)))
        text, special = self._prompt_text(request)
        return self._checked(self.tokenizer.encode(text, add_special_tokens=special))

    def _prompt_text(self, request: GenerateRequest) -> tuple[str, bool]:
        """(text to encode, whether the tokenizer adds its special tokens): a chat template adds its own."""
        tok = self.tokenizer
        if request.messages is not None:
            if not tok.chat_template:
                raise APIError(
                    400, "this model has no chat template; use /v1/completions", "no_chat_template"
                )
            # tools are rendered unless tool_choice is "none" (the model is then not told of them)
            tools = request.tools if request.tool_choice != "none" else None
            try:
                return render_chat(tok, request.messages, tools), False
            except ValueError as e:  # a malformed call in the conversation, named
                raise APIError(400, str(e), "invalid_value", "messages") from None
        return request.prompt or "", True

    def _checked(self, ids: list[int]) -> list[int]:
        if not ids:
            raise APIError(400, "the prompt is empty", "empty_prompt", "prompt")
        if len(ids) > self.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt of {len(ids)} tokens exceeds the limit of {self.max_prompt_tokens}",
                "prompt_too_long",
            )
        return ids

    def _in_vocabulary(self, ids: list[int]) -> list[int]:
        """Token ids given by a client: each one an id of this model's tokenizer (400 naming the first other)."""
        vocab = self.shared.vocab_size
        bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(
                400,
                f"prompt[{bad}] is token id {ids[bad]}, not in this model's vocabulary (0..{vocab - 1})",
                "invalid_token_id",
                "prompt",
            )
        return ids

    def _max_tokens(self, prompt_tokens: int, request: GenerateRequest) -> int:
        """The request's max_tokens within the context: a default is lowered to what the prompt leaves
        (vLLM's default); a given one that does not fit is a 400 with vLLM's (and OpenAI's) message."""
        context = self.shared.max_model_len
        if not context:
            return request.max_tokens
        if prompt_tokens >= context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, the "
                f"{prompt_tokens} tokens in the prompt leave no room for the completion. Please "
                "reduce the length of the messages or prompt.",
                "context_length_exceeded",
                "messages" if request.messages is not None else "prompt",
            )
        if request.fit_context:
            return min(request.max_tokens, context - prompt_tokens)
        if prompt_tokens + request.max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + request.max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{request.max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                "context_length_exceeded",
                "max_tokens",
            )
        return request.max_tokens

    async def _submit(
        self, prompt_ids: list[int], request: GenerateRequest, max_tokens: int
    ) -> AsyncIterator[Any]:
        guided = guided_decoding(
            request.tools, request.tool_choice, request.parallel_tool_calls, request.response_format
        )
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                logprobs=request.logprobs,
                prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None else None,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                logit_bias=self._logit_bias(request.logit_bias),
                guided=guided,
            )
        except ValueError as e:
            raise APIError(400, str(e), "invalid_request") from None
        try:
            return await self.shared.engine.submit(prompt_ids, params, request.request_id, lora=self.lora)
        except ValueError as e:  # the engine refuses the request (too long, bad parameter, a schema)
            if guided is not None and guided.name and guided.kind == "json_schema":
                raise APIError(
                    400,
                    f"{guided.name}: the schema cannot be compiled for guided decoding: {e}",
                    "invalid_schema",
                    guided.name,
                ) from None
            raise APIError(400, str(e), "invalid_request") from None

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        """OpenAI's string token ids as ids, each one of this model's (a 400 names the first other)."""
        if not bias:
            return None
        vocab = self.shared.vocab_size
        bad = next((k for k in bias if not 0 <= int(k) < vocab), None)
        if bad is not None:
            raise APIError(
                400,
                f"logit_bias: token id {bad} is not in this model's vocabulary (0..{vocab - 1})",
                "invalid_token_id",
                "logit_bias",
            )
        return {int(k): float(v) for k, v in bias.items()}

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _entry(self, token_id: int, lp: dict[int, float] | None) -> TokenLogprob:
        lp = lp or {}
        top = {self._token(t): v for t, v in sorted(lp.items(), key=lambda kv: -kv[1])}
        return TokenLogprob(self._token(token_id), lp.get(token_id), top)

    def _logprobs(self, ids: list[int], lps: list, request: GenerateRequest) -> list[TokenLogprob]:
        if request.logprobs is None:
            return []
        entries = [self._entry(t, lp) for t, lp in zip(ids, lps, strict=False)]
        for e in entries:
            e.top = dict(list(e.top.items())[: request.logprobs])
        return entries

    def _prompt_logprobs(
        self, ids: list[int], lps: list | None, request: GenerateRequest
    ) -> list[TokenLogprob]:
        if request.logprobs is None or lps is None:
            return []
        return self._logprobs(ids, lps, request)

    def load(self) -> EngineLoad:
        s = self.shared.engine.stats()
        return EngineLoad(s.running, s.waiting, s.kv_usage, s.prefix_cache_hit_rate)

    async def close(self) -> None:
        self.shared.closed = True
        await asyncio.to_thread(self.shared.engine.shutdown)
        self.shared.encoder.close()
        await asyncio.to_thread(release_freed_memory)  # else each reload keeps a model's size (memory.py)


def _read_calls(parser: StreamingToolParser, delta: Delta, last: bool = False) -> None:
    """The delta's text through the tool-call parser: content and `tool_calls` pieces; a choice that
    called a tool and stopped finishes with "tool_calls" (a cut-off one keeps "length")."""
    parsed = parser.feed(delta.text)
    if last:
        parsed.extend(parser.finish())
        if parser.called and delta.finish_reason == "stop":
            delta.finish_reason = "tool_calls"
    delta.text, delta.tool_calls = parsed.content, parsed.tool_calls


def _model_type(folder: Path) -> str | None:
    config = Path(folder) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None
