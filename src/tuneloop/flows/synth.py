"""`run_synth(docs, out, config)`: the synthesis of data/synth with a real teacher behind it.

The teachers sit here, above the stages, because the data stage imports no engine:
- `EngineTeacher`: a model reference run by our engine in-process; all prompts of a wave go in as
  one `generate` call (continuous batching), each held to the reply's JSON schema by guided
  decoding, so even the default 135M model replies with JSON that parses;
- `UpstreamTeacher`: any OpenAI-compatible server through the official `openai` client: concurrent
  requests (a semaphore), an even pace (`requests_per_minute`), the client's retries with backoff
  for 429/5xx/timeouts; what still fails is that chunk's error, retried by the synthesis, then skipped.
- `JudgeVerifier` (optional, `judge=`): `tuneloop eval`'s LLM judge asked whether each answer agrees
  with its chunk, after the string heuristics; contradicted or unaddressed answers are removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.data.synth import SynthConfig, SynthResult, Teacher, TeacherReply, TeacherRequest, synthesize
from tuneloop.data.synth.teacher import Claim
from tuneloop.errors import TuneloopError, missing_extra
from tuneloop.evaluation.judge import FactItem, Judge
from tuneloop.evaluation.judge_config import JudgeConfig
from tuneloop.models.chat import render_chat
from tuneloop.models.formats import folder_format, require_complete
from tuneloop.models.loading import load_tokenizer, pick_device
from tuneloop.models.remote import api_key, error_message, gather_paced, run_sync
from tuneloop.models.resolve import resolve_model


def run_synth(
    docs: list[str],
    out: str | Path,
    cfg: SynthConfig,
    *,
    fresh: bool = False,
    on_wave: Callable[[int, int], None] | None = None,
    judge: JudgeConfig | None = None,
) -> SynthResult:
    """The dataset from `docs` into `out` (resumed unless `fresh`); with `judge`, the LLM judge
    confirms each answer against its chunk."""
    teacher = _Lazy(cfg)
    verifier = JudgeVerifier(judge) if judge is not None else None
    try:
        return synthesize(docs, out, cfg, teacher, fresh=fresh, on_wave=on_wave, verifier=verifier)
    finally:
        teacher.close()
        if verifier is not None:
            verifier.close()


def make_teacher(cfg: SynthConfig) -> Teacher:
    return UpstreamTeacher(cfg) if cfg.upstream else EngineTeacher(cfg)


class _Lazy:
    """The teacher, made at its first question: bad docs fail before a model loads, and a rerun with
    every chunk done loads none."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.teacher: Teacher | None = None
        self.identity = _identity(cfg)

    def ask(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        if self.teacher is None:
            self.teacher = make_teacher(self.cfg)
        return self.teacher.ask(requests)

    def close(self) -> None:
        if self.teacher is not None:
            self.teacher.close()


def _identity(cfg: SynthConfig) -> str:
    return f"openai:{cfg.teacher}:{cfg.teacher_model}" if cfg.upstream else f"engine:{cfg.teacher}"


# ------------------------------------------------------------------ our engine, in-process


class EngineTeacher:
    def __init__(self, cfg: SynthConfig):
        ref = cfg.teacher
        folder = resolve_model(ref, pull=True).path
        fmt = folder_format(folder)
        if fmt != "hf":
            raise TuneloopError(
                f"--teacher '{ref}' is a {fmt} folder, which the engine does not run",
                hint="give a full model (HF folder or store name), or an OpenAI-compatible URL",
            )
        require_complete(folder, ref)
        self.tokenizer = load_tokenizer(folder)
        if not getattr(self.tokenizer, "chat_template", None):
            raise TuneloopError(
                f"--teacher '{ref}' has no chat template", hint="use an instruct (chat) model"
            )
        from tuneloop.engine import LLMEngine  # torch: only for a local teacher

        self.engine = LLMEngine.from_pretrained(
            folder, device=pick_device(cfg.device), kv_cache_gib=cfg.kv_cache_gib
        )
        self.max_model_len = self.engine.runner.max_model_len
        self.identity = _identity(cfg)

    def ask(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        from tuneloop.engine import GuidedDecoding, SamplingParams

        out: list[TeacherReply | None] = [None] * len(requests)
        runnable: list[tuple[int, list[int], SamplingParams]] = []
        for i, req in enumerate(requests):
            ids = self.tokenizer.encode(render_chat(self.tokenizer, req.messages), add_special_tokens=False)
            room = self.max_model_len - len(ids)
            if room < 16:
                why = f"the prompt has {len(ids)} tokens; the teacher's context holds {self.max_model_len}"
                out[i] = TeacherReply("", error=why + " (lower --chunk-tokens)")
                continue
            guided = GuidedDecoding(json_schema=req.schema, name="synth") if req.schema else None
            params = SamplingParams(
                max_tokens=min(req.max_tokens, room),
                temperature=req.temperature,
                seed=req.seed,
                guided=guided,
            )
            runnable.append((i, ids, params))
        if runnable:  # one call: the engine batches them all continuously
            results = self.engine.generate([ids for _, ids, _ in runnable], [p for _, _, p in runnable])
            for (i, _, _), r in zip(runnable, results, strict=True):
                text = self.tokenizer.decode(r.token_ids, skip_special_tokens=True)
                out[i] = TeacherReply(text, error=r.error, tokens=len(r.token_ids))
        return [r for r in out if r is not None]

    def close(self) -> None:
        self.engine = None  # type: ignore[assignment]  # weights and KV cache go with it


# ------------------------------------------------------------------ the LLM judge as a second check


class JudgeVerifier:
    """An answer is kept when the judge says it agrees with the chunk; `unknown` (no readable
    verdict) keeps it too, since the string checks already passed it."""

    def __init__(self, config: JudgeConfig):
        self.judge = Judge(config)
        self.identity = f"judge:{self.judge.identity}"

    def verify(self, claims: list[Claim]) -> list[str | None]:
        verdicts = self.judge.check_many([FactItem(c.question, c.answer, c.chunk) for c in claims])
        return [f"judge_{v.label}" if v.label in ("contradicts", "not_addressed") else None for v in verdicts]

    def close(self) -> None:
        self.judge.close()


# ------------------------------------------------------------------ an OpenAI-compatible upstream


class UpstreamTeacher:
    def __init__(self, cfg: SynthConfig):
        try:
            import openai
        except ImportError:
            raise missing_extra("openai", "serve") from None
        self.openai, self.cfg = openai, cfg
        self.api_key = api_key(cfg.api_key_env, "--api-key-env")
        self.identity = _identity(cfg)

    def ask(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        return run_sync(self._all(requests))

    async def _all(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        c = self.cfg
        # the client's own retries: 408/409/429/5xx, timeouts and broken connections, exponential
        # backoff that honours Retry-After
        client = self.openai.AsyncOpenAI(
            base_url=c.teacher, api_key=self.api_key, max_retries=c.http_retries, timeout=c.timeout_s
        )
        try:
            return await gather_paced(
                requests, lambda r: self._one(client, r), c.concurrency, c.requests_per_minute
            )
        finally:
            await client.close()

    async def _one(self, client: Any, req: TeacherRequest) -> TeacherReply:
        e, c = self.openai, self.cfg
        extra: dict[str, Any] = {}
        if req.schema:
            schema = {"name": "qa_pairs", "schema": json.loads(req.schema), "strict": True}
            extra["response_format"] = {"type": "json_schema", "json_schema": schema}
        try:
            r = await client.chat.completions.create(
                model=c.teacher_model,
                messages=req.messages,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                seed=req.seed,
                **extra,
            )
        except (e.AuthenticationError, e.PermissionDeniedError) as err:
            return _fatal(
                f"the teacher at {c.teacher} refused the key ({error_message(err)}); check --api-key-env"
            )
        except e.NotFoundError as err:
            return _fatal(
                f"the teacher at {c.teacher} has no model '{c.teacher_model}' ({error_message(err)})"
            )
        except e.BadRequestError as err:
            hint = " (an upstream without structured outputs: pass --no-guided)" if req.schema else ""
            return TeacherReply("", error=f"the teacher refused the prompt: {error_message(err)}{hint}")
        except e.APIStatusError as err:
            return TeacherReply(
                "", error=f"the teacher answered {err.status_code} after {c.http_retries} retries"
            )
        except e.APIError as err:  # connection refused, timeouts: after the client's retries
            return TeacherReply("", error=f"no answer from the teacher after {c.http_retries} retries: {err}")
        choice = r.choices[0] if r.choices else None
        text = (choice.message.content or "") if choice else ""
        return TeacherReply(text, tokens=r.usage.completion_tokens if r.usage else 0)

    def close(self) -> None:
        pass


def _fatal(message: str) -> TeacherReply:
    return TeacherReply("", error=message, fatal=True)
