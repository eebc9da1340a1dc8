"""Who answers the judge's prompts: tuneloop's engine (a local model reference) or an OpenAI-compatible
upstream through the official `openai` client. Both take a whole batch of conversations at once: the
engine batches them continuously, the upstream runs them concurrently (bounded, rate-limited, retried).

A failure that belongs to one prompt (too long for the judge's context, a 400) comes back as that
completion's `error`; one that belongs to the service (wrong key, unknown model, unreachable after the
retries) is `fatal`, and the judge raises once it has cached what did complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.evaluation.judge_config import JudgeConfig
from tuneloop.evaluation.perplexity import render_chat
from tuneloop.models.formats import folder_format, require_complete
from tuneloop.models.loading import load_tokenizer, pick_device
from tuneloop.models.remote import api_key, error_message, gather_paced, run_sync
from tuneloop.models.resolve import resolve_model

Messages = list[dict[str, str]]


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # no reply for this prompt, and why
    fatal: bool = False  # the error is the service's, not the prompt's: stop judging


class Backend(Protocol):
    identity: str  # what judged: part of the cache key and of every log record
    # continues a conversation that ends with an assistant turn (the reply begun for the model)
    continues_reply: bool

    def complete(
        self, conversations: list[Messages], max_tokens: int, temperature: float
    ) -> list[Completion]: ...

    def close(self) -> None: ...


def make_backend(config: JudgeConfig) -> Backend:
    if config.model:
        return EngineBackend(config.model, config.device, config.kv_cache_gib)
    return OpenAIBackend(config)


# ------------------------------------------------------------------ our engine


class EngineBackend:
    """A model reference run by `tuneloop.engine.LLMEngine` (an adapter runs as LoRA on its base)."""

    ADAPTER = "judge"
    continues_reply = True

    def __init__(self, ref: str, device: str = "auto", kv_cache_gib: float | None = None):
        resolved = resolve_model(ref)
        folder, adapter = resolved.path, None
        fmt = folder_format(folder)
        if fmt == "adapter":
            require_complete(folder, ref)
            adapter, base_ref = folder, _adapter_base(folder, ref)
            folder = resolve_model(base_ref).path
            fmt = folder_format(folder)
        if fmt != "hf":
            raise TuneloopError(
                f"judge.model '{ref}' is a {fmt} export, which the engine does not run",
                hint="judge with the full model folder it was exported from (or its LoRA adapter)",
            )
        require_complete(folder, ref)
        tok_dir = adapter if adapter and (adapter / "tokenizer_config.json").is_file() else folder
        self.tokenizer = load_tokenizer(tok_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise TuneloopError(
                f"judge.model '{ref}' has no chat template", hint="judge with an instruct (chat) model"
            )
        self.identity = f"engine:{ref}:{_fingerprint(folder, adapter)}"
        from tuneloop.engine import LLMEngine  # torch and the engine: only for a local judge

        self.engine = LLMEngine.from_pretrained(folder, device=pick_device(device), kv_cache_gib=kv_cache_gib)
        if adapter is not None:
            self.engine.load_lora(self.ADAPTER, adapter)
        self.lora = self.ADAPTER if adapter is not None else None
        self.max_model_len = self.engine.runner.max_model_len

    def complete(
        self, conversations: list[Messages], max_tokens: int, temperature: float
    ) -> list[Completion]:
        from tuneloop.engine import SamplingParams  # as in __init__: torch only for a local judge

        out: list[Completion | None] = [None] * len(conversations)
        runnable: list[tuple[int, list[int], SamplingParams]] = []
        for i, conv in enumerate(conversations):
            ids = self.tokenizer.encode(self._render(conv), add_special_tokens=False)
            room = self.max_model_len - len(ids)
            if room < 1:
                why = f"the prompt has {len(ids)} tokens; the judge's context holds {self.max_model_len}"
                out[i] = Completion("", len(ids), 0, error=why)
                continue
            params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, seed=0)
            runnable.append((i, ids, params))
        if runnable:  # one call: the engine schedules them all with continuous batching
            results = self.engine.generate(
                [ids for _, ids, _ in runnable],
                [p for _, _, p in runnable],
                lora=[self.lora] * len(runnable) if self.lora else None,
            )
            for (i, ids, _), r in zip(runnable, results, strict=True):
                text = self.tokenizer.decode(r.token_ids, skip_special_tokens=True).strip()
                out[i] = Completion(text, len(ids), len(r.token_ids), error=r.error)
        return [c for c in out if c is not None]

    def _render(self, conv: Messages) -> str:
        if conv[-1]["role"] != "assistant":
            return render_chat(self.tokenizer, conv, True)
        try:  # a reply begun for the model (judge_prompts.prefilled): the template leaves it open
            return self.tokenizer.apply_chat_template(conv, tokenize=False, continue_final_message=True)
        except Exception as e:  # jinja's raise_exception, as render_chat
            raise TuneloopError(
                f"the judge's chat template refused a begun reply: {type(e).__name__}: {str(e)[:200]}",
                hint="set judge.reasons=true, or judge with another model",
            ) from None

    def close(self) -> None:
        self.engine = None  # type: ignore[assignment]  # the KV cache and weights go with it


def _adapter_base(folder: Path, ref: str) -> str:
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise TuneloopError(f"judge.model '{ref}': adapter_config.json cannot be read ({e})") from None
    if not base:
        raise TuneloopError(
            f"judge.model '{ref}' is an adapter that does not say its base model",
            hint="adapter_config.json needs base_model_name_or_path",
        )
    return str(base)


def _fingerprint(*folders: Path | None) -> str:
    """Names, sizes and times of the weight files: a retrained model in the same folder is a new judge."""
    h = hashlib.sha256()
    for folder in folders:
        if folder is None:
            continue
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            st = f.stat()
            h.update(f"{folder}/{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ an OpenAI-compatible upstream


class OpenAIBackend:
    """Chat completions from any OpenAI-compatible server (OpenAI, vLLM, `tuneloop serve`, ...)."""

    continues_reply = False  # OpenAI's API has no way to begin the reply for the model

    def __init__(self, config: JudgeConfig):
        try:
            import openai
        except ImportError:
            raise missing_extra("openai", "serve") from None
        self.openai = openai
        self.config = config
        self.api_key = api_key(config.api_key_env, "judge.api_key_env", ", or drop api_key_env")
        self.identity = f"openai:{config.base_url}:{config.model_name}"

    def complete(
        self, conversations: list[Messages], max_tokens: int, temperature: float
    ) -> list[Completion]:
        return run_sync(self._all(conversations, max_tokens, temperature))

    async def _all(
        self, conversations: list[Messages], max_tokens: int, temperature: float
    ) -> list[Completion]:
        c = self.config
        # the client's own retries: 408/409/429/5xx and broken connections, exponential backoff
        # that honours Retry-After
        client = self.openai.AsyncOpenAI(
            base_url=c.base_url, api_key=self.api_key, max_retries=c.max_retries, timeout=c.timeout_s
        )
        try:
            return await gather_paced(
                conversations,
                lambda m: self._one(client, m, max_tokens, temperature),
                c.concurrency,
                c.requests_per_minute,
            )
        finally:
            await client.close()

    async def _one(self, client: Any, messages: Messages, max_tokens: int, temperature: float) -> Completion:
        errors = self.openai
        c = self.config
        try:
            r = await client.chat.completions.create(
                model=c.model_name, messages=messages, max_tokens=max_tokens, temperature=temperature
            )
        except errors.BadRequestError as e:  # this prompt (too long for the context, ...): this item only
            return Completion("", error=f"the upstream refused the prompt: {error_message(e)}")
        except errors.AuthenticationError as e:
            return _fatal(
                f"the upstream judge at {c.base_url} refused the key ({error_message(e)})",
                "judge.api_key_env",
            )
        except errors.NotFoundError as e:
            return _fatal(
                f"the upstream judge at {c.base_url} has no model '{c.model_name}' ({error_message(e)})",
                "judge.model_name",
            )
        except errors.APIStatusError as e:
            return _fatal(
                f"the upstream judge at {c.base_url} answered {e.status_code} after {c.max_retries} "
                f"retries: {error_message(e)}",
                "judge.max_retries, or try later",
            )
        except errors.APIError as e:  # connection refused, timeouts: after the retries
            return _fatal(
                f"the upstream judge at {c.base_url} did not answer after {c.max_retries} retries: {e}",
                "judge.base_url, judge.timeout_s",
            )
        choice = r.choices[0] if r.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = r.usage
        return Completion(
            text.strip(),
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    def close(self) -> None:
        pass


def _fatal(message: str, check: str) -> Completion:
    return Completion("", error=f"{message} (check {check})", fatal=True)
