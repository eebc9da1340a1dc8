"""`JudgeConfig`: which model judges, with what rubric, and where its judgments are cached and logged.

A section of its own (`judge:`) that an eval, gate or curate config embeds. It imports nothing heavy,
so a config that only validates does not load torch or the openai client.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tuneloop.config import Config

# What "better" means when the config says nothing: correctness first (a wrong fact is worse than
# a missing one), then relevance and clarity. Length and order are named because they are the
# known biases of LLM judges.
DEFAULT_RUBRIC = (
    "Prefer the answer that is correct: it agrees with the reference answer and the known facts "
    "when they are given, and states nothing false (a wrong fact is worse than a missing one). "
    "Then prefer the answer that addresses the question asked, and is clear and concise. "
    "Length is not a merit, and the order in which the answers are shown must not matter. "
    "If both are equally good or equally wrong, say tie."
)


class JudgeConfig(Config):
    """The judge: a model served by tuneloop's engine (`model`), or an OpenAI-compatible server
    (`base_url` + `model_name`, its key in the environment variable `api_key_env`)."""

    model: str | None = Field(
        None, description="a model reference (folder, store name, NAME@alias, adapter) run by our engine"
    )
    base_url: str | None = Field(None, description="an OpenAI-compatible API, e.g. https://host/v1")
    model_name: str | None = Field(
        None, validate_default=True, description="the model name the upstream serves (with base_url)"
    )
    api_key_env: str | None = Field(
        None, validate_default=True, description="environment variable holding the upstream's API key"
    )
    rubric: str = Field(DEFAULT_RUBRIC, min_length=1, description="what makes an answer better")
    reasons: bool = Field(
        True,
        description="the judge gives short reasons before its verdict (false: the verdict alone; faster, "
        "and an engine judge's reply is then begun with 'Verdict:' for it, which small models need)",
    )
    max_tokens: int = Field(256, ge=1, le=32768, description="longest judge reply (reasons + verdict)")
    temperature: float = Field(
        0.0, ge=0, le=2, description="0: greedy, the same inputs give the same verdict"
    )
    cache: Path | None = Field(
        None, description="SQLite file of judgments (default TUNELOOP_HOME/judge/cache.sqlite)"
    )
    use_cache: bool = Field(True, description="false: ask the judge again even for inputs it has seen")
    log: Path | None = Field(
        None,
        description="JSONL audit log of every prompt and raw reply (default TUNELOOP_HOME/judge/log.jsonl)",
    )
    device: str = Field("auto", description="engine judge: auto, cpu, cuda, cuda:1, ...")
    kv_cache_gib: float | None = Field(
        None, gt=0, description="engine judge: KV cache size (default: the engine's, 1 GiB on the CPU)"
    )
    concurrency: int = Field(8, ge=1, le=1024, description="upstream judge: requests in flight at once")
    requests_per_minute: float | None = Field(
        None, gt=0, description="upstream judge: start at most this many requests a minute (None: no limit)"
    )
    max_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="upstream judge: retries of a 429, 5xx or broken connection (with backoff)",
    )
    timeout_s: float = Field(120.0, gt=0, description="upstream judge: seconds one request may take")

    @field_validator("rubric")
    @classmethod
    def _rubric_has_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the rubric is blank; write what makes an answer better, or leave it out")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https:// (e.g. https://api.openai.com/v1)")
        return v

    # validate_default: these run even when the key is absent, so the error sits on the key's name
    @field_validator("model_name")
    @classmethod
    def _name_goes_with_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if "base_url" not in info.data:  # base_url itself was invalid: that error is enough
            return v
        url = info.data["base_url"]
        if url and not v:
            raise ValueError("an upstream judge (base_url) needs model_name: the model the server serves")
        if v and not url:
            raise ValueError("model_name names an upstream's model; set base_url too, or use model: REF")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _key_goes_with_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and "base_url" in info.data and not info.data["base_url"]:
            raise ValueError("api_key_env is for an upstream judge; set base_url too, or drop it")
        return v

    @model_validator(mode="after")
    def _one_judge(self) -> JudgeConfig:
        if self.model and self.base_url:
            raise ValueError("set either model (a local judge) or base_url (an upstream judge), not both")
        if not self.model and not self.base_url:
            raise ValueError(
                "no judge: set model (a model reference, e.g. smollm2-135m-instruct) or base_url + model_name"
            )
        return self
