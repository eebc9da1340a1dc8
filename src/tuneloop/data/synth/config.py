"""`SynthConfig`: how question-answer pairs are generated from documents by a teacher model.

The teacher is one string, like every model reference in tuneloop: a model served by our engine
in-process (`smollm2-135m-instruct`, a folder, `NAME@alias`), or the base URL of an OpenAI-compatible
upstream (`https://api.openai.com/v1`, a vLLM server, `tuneloop serve`) with `teacher_model`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config import Config

# The kinds of question asked of every chunk; prompts.py has the wording for each, per language.
KINDS = ("fact", "number", "procedure", "comparison")


class SynthConfig(Config):
    teacher: str = Field(
        "smollm2-135m-instruct",
        description="a model reference run by our engine, or an OpenAI-compatible base URL (http://host/v1)",
    )
    teacher_model: str | None = Field(
        None, description="the model name an upstream teacher serves (URL only)"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the upstream's API key")
    questions_per_chunk: int = Field(3, ge=1, le=20, description="questions asked of each chunk")
    kinds: list[str] = Field(list(KINDS), min_length=1, description=f"question kinds, of {', '.join(KINDS)}")
    paraphrases: int = Field(1, ge=0, le=5, description="reworded variants of each question (extra rows)")
    chunk_tokens: int = Field(384, ge=32, description="chunk size in tokens of `tokenizer`")
    tokenizer: str = Field("smollm2-135m-instruct", description="tokenizer that measures chunks")
    pii: Literal["redact", "off"] = Field(
        "redact",
        description="redact PII and secrets in the documents before a teacher sees them (as data prepare "
        "does): a hosted teacher would otherwise receive them, and the answers would repeat them",
    )
    max_chunks: int | None = Field(None, ge=1, description="use only the first N chunks (in file order)")
    answer_chars: int = Field(
        400, ge=20, le=4000, description="longest answer in characters (questions: half); bounds the reply"
    )
    max_tokens: int = Field(768, ge=16, description="longest teacher reply, in tokens")
    temperature: float = Field(0.0, ge=0, le=2, description="teacher sampling (0: greedy; retries vary it)")
    guided: bool = Field(
        True,
        description="ask for the reply's JSON schema as structured output (our engine: guided decoding, "
        "so it always parses; an upstream: response_format json_schema)",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="chunks in flight at once")
    requests_per_minute: float | None = Field(None, gt=0, description="upstream: request starts a minute")
    retries: int = Field(
        2, ge=0, le=10, description="extra tries of a chunk whose reply failed or was malformed"
    )
    http_retries: int = Field(
        2, ge=0, le=20, description="upstream: the client's retries of a 429/5xx/timeout"
    )
    timeout_s: float = Field(120.0, gt=0, description="upstream: seconds one request may take")
    device: str = Field("auto", description="engine teacher: auto, cpu, cuda, cuda:1, ...")
    kv_cache_gib: float | None = Field(None, gt=0, description="engine teacher: KV cache size")
    min_support: float = Field(
        0.6, ge=0, le=1, description="grounding: share of the answer's content words found in the chunk"
    )
    eval: list[str] = Field(
        default_factory=list, description="evaluation sets (JSONL) no question may leak from"
    )
    leak_ngram: int = Field(6, ge=2, description="leakage: word n-gram (characters for Chinese) size")
    leak_overlap: float = Field(
        0.5, gt=0, le=1, description="leakage: share of a question's n-grams found in one eval question"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="chunks whose rows go to val/")
    seed: int = Field(0, description="split seed")
    shard_rows: int = Field(100_000, ge=1, description="rows per output shard")
    parquet: bool = Field(True, description="also write a .parquet copy of every .jsonl shard")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in KINDS]
        if bad:
            raise ValueError(f"unknown question kind(s) {', '.join(bad)}; use {', '.join(KINDS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _upstream_names_its_model(self) -> SynthConfig:
        if self.upstream and not self.teacher_model:
            raise ValueError(
                f"teacher '{self.teacher}' is an upstream URL: set teacher_model (--teacher-model), "
                "the model name it serves"
            )
        if not self.upstream and (self.teacher_model or self.api_key_env):
            raise ValueError("teacher_model and api_key_env are for an upstream teacher (teacher=http://...)")
        return self

    @property
    def upstream(self) -> bool:
        return self.teacher.startswith(("http://", "https://"))

    def teacher_identity(self) -> str:
        """What generated the rows (the manifest and the resume record)."""
        return f"{self.teacher}#{self.teacher_model}" if self.upstream else self.teacher
