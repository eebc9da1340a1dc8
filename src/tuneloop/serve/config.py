"""`ServeConfig`: what `tuneloop serve` serves and under which limits (serve.yaml, typed)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config import Config


class EngineSettings(Config):
    """`engine:` of a model entry: every `tuneloop.engine.EngineConfig` setting; unset ones are the engine's.

    Left unset, the engine sizes itself for the device (engine/sizing.py): on an H100-class GPU 256
    sequences and 8,192 tokens a step, FlashAttention varlen prefill and LoRA decode in CUDA graphs;
    on the CPU 64 sequences and 2,048 tokens. A test keeps these fields equal to EngineConfig's.
    """

    device: str | None = None  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    block_size: Literal[1, 2, 4, 8, 16, 32, 64, 128] | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    kv_cache_fraction: float | None = Field(default=None, gt=0, le=1)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    prefix_caching: bool | None = None
    max_loras: int | None = Field(default=None, ge=1)
    lora_in_graph: bool | None = None
    max_lora_rank: int | None = Field(default=None, ge=1)
    compile_ops: bool | None = None
    enforce_eager: bool | None = None
    max_graph_batch: int | None = Field(default=None, ge=1)
    async_scheduling: bool | None = None
    async_max_batch: int | None = Field(default=None, ge=1)
    quantization: Literal["none", "int8", "fp8"] | None = None
    prefill_attention: Literal["auto", "padded", "varlen"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EngineSettings:
        if self.lora_in_graph and self.enforce_eager:
            raise ValueError("lora_in_graph replays CUDA graphs, which enforce_eager turns off; set only one")
        return self

    def kwargs(self) -> dict[str, object]:
        """The settings given, as `EngineConfig` / `LLMEngine.from_pretrained` keyword arguments."""
        return self.model_dump(exclude_none=True)


class ModelConfig(Config):
    """One served name: a local model (any model reference, optionally a LoRA on it) or an upstream."""

    name: str = Field(min_length=1)
    model: str | None = None  # model reference: folder, store name, NAME@alias, NAME/VERSION
    lora: str | None = None  # an adapter reference served on `model`'s engine
    upstream: str | None = None  # base URL of an OpenAI-compatible server (…/v1)
    upstream_model: str | None = None  # the model name upstream (default: `name`)
    upstream_api_key: str | None = None
    engine: EngineSettings = Field(default_factory=EngineSettings)
    # shorthands of engine.kv_cache_gib / engine.max_model_len / engine.device (give one spelling)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    max_model_len: int | None = Field(default=None, ge=1)
    device: str | None = None
    # the engine steps in a process of its own (vLLM V1's design): its host work and the server's
    # per-token Python work no longer share one GIL. None: on for CUDA devices (at 128 streams on an
    # H100 the gateway kept 0.80x of the engine's throughput against 0.65x in-process), off on the CPU
    engine_process: bool | None = None
    # requests generating at once (more wait, up to max_queue; then 429). None: the engine's
    # max_num_seqs for a local model (the engine batches them all), 64 for an upstream
    max_concurrency: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=256, ge=0)  # requests waiting beyond that; then 429
    # the format the model writes tool calls in (models.tool_calls: hermes, llama3_json); default:
    # detected from its chat template (hermes for a template without tools: tuneloop's fallback)
    tool_parser: Literal["hermes", "llama3_json"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.model is None) == (self.upstream is None):
            raise ValueError(f"model '{self.name}': give exactly one of 'model' or 'upstream'")
        for key in ("kv_cache_gib", "max_model_len", "device"):
            short, full = getattr(self, key), getattr(self.engine, key)
            if short is not None and full is not None and short != full:
                raise ValueError(
                    f"model '{self.name}': {key} is {short!r} but engine.{key} is {full!r}; give one of them"
                )
        if self.upstream is not None and self.engine.kwargs():
            raise ValueError(
                f"model '{self.name}': 'engine' settings apply to local models, not to an upstream"
            )
        return self

    def engine_kwargs(self) -> dict[str, object]:
        """The engine settings of this entry, shorthands included."""
        short = {k: getattr(self, k) for k in ("kv_cache_gib", "max_model_len", "device")}
        return {**{k: v for k, v in short.items() if v is not None}, **self.engine.kwargs()}


class JWTConfig(Config):
    """OAuth2 bearer tokens from an identity provider, accepted next to API keys."""

    issuer: str
    audience: str
    jwks_url: str  # the provider's public keys (fetched, cached, refetched for an unknown key id)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    scope_claim: str = "scope"  # space-separated string or list; values are tuneloop scopes
    models_claim: str | None = None  # a claim listing allowed served names (default: all)
    jwks_cache_s: float = Field(default=300.0, ge=0)


class AuthConfig(Config):
    enabled: bool = True  # off only for local experiments: every request is then anonymous
    database_url: str | None = None  # default: sqlite in TUNELOOP_HOME/serve/serve.db
    jwt: JWTConfig | None = None


class LimitsConfig(Config):
    # when a request gives no max_tokens: what the model's context has left after the prompt (as vLLM),
    # at most this when set, else at most max_completion_tokens (also what a token quota reserves for
    # each choice of such a request)
    max_tokens_default: int | None = Field(default=None, ge=1)
    max_completion_tokens: int = Field(default=4096, ge=1)
    max_prompt_tokens: int = Field(default=32768, ge=1)
    max_n: int = Field(default=8, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    request_timeout_s: float = Field(default=600.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1)  # the hint sent with a 429 for overload
    # per-key requests/tokens per minute: in this process, or in Redis shared by every replica
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # redis://[:password@]host:6379/0, rediss://..., unix:///path
    redis_prefix: str = Field(default="tuneloop:ratelimit", min_length=1)  # key prefix in Redis
    redis_timeout_s: float = Field(default=0.5, gt=0)  # per Redis call; a hung Redis never hangs requests
    redis_unavailable: Literal["reject", "allow"] = "reject"  # Redis down: 503, or no limits (counted)
    # a token reservation in Redis is a lease its replica renews every third of this while the
    # request runs: a replica that dies holds its keys' quota at most this long
    reservation_lease_s: float = Field(default=30.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _redis_url_given(self) -> LimitsConfig:
        if self.backend == "redis":
            if not self.redis_url:
                raise ValueError("limits.backend is 'redis' but limits.redis_url is not set")
            scheme = self.redis_url.partition("://")[0]
            if scheme not in ("redis", "rediss", "unix"):
                raise ValueError(
                    f"limits.redis_url must start with redis://, rediss:// or unix://, not {scheme!r}"
                )
        return self


class DenyPattern(Config):
    pattern: str  # a regular expression, searched in every user text (case-insensitive)
    reason: str = "the request matches a blocked pattern"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression {v!r}: {e}") from None
        return v


class InputConfig(Config):
    # searched in every user text, and in the decoded text of prompts given as token ids (a model
    # without a tokenizer in the gateway, an upstream, then refuses token-id prompts)
    deny: list[DenyPattern] = Field(default_factory=list)


class LogConfig(Config):
    """The request log, and how everything the gateway stores about people is kept (log, feedback)."""

    enabled: bool = True
    path: str | None = None  # default: TUNELOOP_HOME/serve/requests.jsonl (files 0600, folder 0700)
    max_bytes: int = Field(default=50 << 20, ge=1024)
    backups: int = Field(default=10, ge=0)
    # emails, phones, Chinese IDs, bank cards, IPs -> <EMAIL>, <PHONE>, ... in the logged texts and in
    # feedback corrections and comments (the detectors of `data prepare`); false stores them verbatim
    redact_pii: bool = True
    # OpenAI's `user` stored as u-<24 hex>, a keyed hash (secret in the serving database): stable, so
    # raters still count apart, but not reversible by guessing; false stores the id as sent
    pseudonymize_users: bool = True
    # log lines and answered-response records older than this are purged (hourly, at start, and by
    # `tuneloop logs purge`); feedback on an answer older than this is refused; null keeps them forever
    retention_days: float | None = Field(default=30.0, gt=0)


class VariantConfig(Config):
    model: str = Field(min_length=1)  # a served name from `models`
    weight: float = Field(default=1.0, ge=0)


class RouteConfig(Config):
    """A name that splits traffic across served models (A/B, canary), sticky per user."""

    name: str = Field(min_length=1)
    variants: list[VariantConfig] = Field(min_length=1)
    shadow: str | None = None  # a served name that gets a mirrored copy; its answer is discarded

    @model_validator(mode="after")
    def _some_weight(self) -> RouteConfig:
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"route '{self.name}': the variant weights must not all be 0")
        return self


class ServeConfig(Config):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    models: list[ModelConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    warmup: bool = True  # one generation per model before /ready says yes
    reload_interval_s: float | None = Field(
        default=None, gt=0
    )  # re-resolve references (moved aliases) this often

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        names = [m.name for m in self.models] + [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"served model and route names must be unique; repeated: {', '.join(dupes)}")
        served = {m.name for m in self.models}
        for r in self.routes:
            for target in [v.model for v in r.variants] + ([r.shadow] if r.shadow else []):
                if target not in served:
                    raise ValueError(f"route '{r.name}': '{target}' is not a served model name")
        return self
