"""`LoopConfig`: what one feedback-loop cycle collects, keeps, trains, gates and canaries (loop.yaml).

tuneloop loop run --model acme-support --config loop.yaml gate.margin=0.05 canary.share=0.2
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config import Config
from tuneloop.errors import ConfigError
from tuneloop.evaluation.judge_config import JudgeConfig

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@functools.lru_cache(maxsize=256)  # the canary asks for its durations at every look
def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """'90s', '15m', '2h', '1d' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None:
            raise ConfigError(f"{what} '{text}' is not a duration", hint="write e.g. 30s, 15m, 2h or 1d")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{what} '{text}' must be positive", hint="write e.g. 30s, 15m, 2h or 1d")
    return seconds


class CollectSettings(Config):
    log_path: str | None = Field(
        None, description="gateway request log (default: TUNELOOP_HOME/serve/requests.jsonl)"
    )
    database_url: str | None = Field(
        None, description="gateway feedback database (default: SQLite in TUNELOOP_HOME/serve)"
    )
    served_name: str | None = Field(
        None, description="the name clients call (a route or model; default: --model)"
    )
    variants: list[str] | None = Field(None, description="only answers of these variants (default: all)")
    workload: str | None = Field(None, description="only requests tagged metadata.workload=VALUE")
    keys: list[str] | None = Field(None, description="only requests made with these API key ids")


class ApprovalSettings(Config):
    required: bool = Field(False, description="every example waits for a human (tuneloop feedback review)")
    database_url: str | None = Field(
        None, description="review queue database (default: the feedback database)"
    )


class TrustSettings(Config):
    """How much an API key's vote weighs (loop/trust.py has the formula)."""

    new_key_weight: float = Field(0.25, gt=0, le=1, description="weight of a key the loop has never seen")
    full_after: str = Field(
        "30d", description="age (since the loop first saw the key) at which its record counts fully"
    )
    prior: float = Field(
        10, gt=0, description="votes of history before the record outweighs the newcomer weight"
    )

    @field_validator("full_after")
    @classmethod
    def _duration(cls, v: str) -> str:
        if _DURATION.match(str(v)) is None:
            raise ValueError(f"'{v}' is not a duration (write e.g. 7d, 30d)")
        return v


class FrozenSettings(Config):
    """When a feedback question counts as a frozen-set or validation question (loop/frozen.py)."""

    minhash: float = Field(0.7, gt=0, le=1, description="MinHash Jaccard of character shingles")
    words: float = Field(0.6, gt=0, le=1, description="Jaccard of content words")
    similarity: float = Field(0.7, gt=0, le=1, description="embedding cosine (curate.embedder; English)")
    cjk_bigrams: float = Field(0.25, gt=0, le=1, description="Jaccard of character bigrams (Chinese text)")


class CurateSettings(Config):
    pii: Literal["redact", "drop", "off"] = "redact"
    keep_known_values: bool = Field(
        True,
        description="redaction leaves values the knowledge base states (training data, frozen set, or two "
        "documents: product IPs, hotlines) and redacts the rest",
    )
    knowledge: list[str] = Field(
        default_factory=list,
        description="source documents the answers must agree with (files or folders: md, txt, html, csv, jsonl)",
    )
    embedder: str = Field(
        "minilm",
        description="sentence embeddings for paraphrase checks: minilm (the `loop` extra), a "
        "sentence-transformers folder, or none (literal and lexical checks only)",
    )
    injection_threshold: float = Field(
        0.35, gt=0, le=1, description="similarity to an injection/abuse seed that flags a sentence"
    )
    injection_margin: float = Field(
        0.05, ge=0, le=1, description="how much closer to a seed than to any benign text it must be"
    )
    frozen: FrozenSettings = Field(default_factory=FrozenSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    judge: JudgeConfig | None = Field(
        None, description="an LLM judge as a second opinion on facts (omit: the rule-based check alone)"
    )
    positive_min: int = Field(4, ge=1, le=5, description="ratings >= this are upvotes (thumbs up = 5)")
    negative_max: int = Field(2, ge=1, le=5, description="ratings <= this are downvotes (thumbs down = 1)")
    min_raters: int = Field(1, ge=1, description="distinct raters an answer needs before it is used")
    min_agreement: float = Field(
        0.75, gt=0.5, le=1.0, description="share of raters who must agree (when several rated one answer)"
    )
    existing_data: list[str] = Field(
        default_factory=list, description="training data to dedup against (.jsonl)"
    )
    dedup_threshold: float = Field(0.8, gt=0, le=1, description="near-duplicate Jaccard similarity")
    conflicts: Literal["reject", "keep"] = Field(
        "reject", description="a correction whose question is in the training data with another answer"
    )
    injection_patterns: list[str] = Field(
        default_factory=list, description="extra regexes (case-insensitive)"
    )
    abuse_words: list[str] = Field(default_factory=list, description="extra words that mark abuse")
    max_chars: int = Field(4000, gt=0, description="longer prompts or answers are rejected")
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="new examples kept for the gate")
    holdout_seed: int = Field(
        0, description="which questions are held out (split by question, stable across runs)"
    )
    max_per_key: float | None = Field(
        0.5,
        gt=0,
        description="most proposals the ratings of one API key may bring to a batch: a share of the "
        "batch below 1 (applied when several keys rated) or a count of 1 or more; null: no cap",
    )
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)

    @field_validator("max_per_key")
    @classmethod
    def _share_or_count(cls, v: float | None) -> float | None:
        if v is not None and v >= 1 and v != int(v):
            raise ValueError(f"curate.max_per_key {v} is neither a share (below 1) nor a whole count")
        return v

    @field_validator("injection_patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"invalid regular expression {p!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _ratings(self) -> CurateSettings:
        if self.negative_max >= self.positive_min:
            raise ValueError(
                f"curate.negative_max ({self.negative_max}) must be below curate.positive_min ({self.positive_min})"
            )
        return self


OBJECTIVES = ("sft", "dpo", "kto")  # the order they run in, each from the previous one's merged model


class RetrainSettings(Config):
    objectives: list[Literal["sft", "dpo", "kto"]] | Literal["auto"] = Field(
        "auto",
        description="auto: sft, then kto when the cycle has thumbs-down answers without a correction "
        "(KTO learns from thumbs alone; loop/retrain.py); or a list such as [sft], [sft, dpo], [sft, kto]",
    )
    objective_overrides: dict[Literal["sft", "dpo", "kto"], list[str]] = Field(
        default_factory=dict,
        description="key=value overrides for one objective's run only, after `overrides` "
        "(e.g. {kto: [optim.lr=1e-4]})",
    )
    train_config: str | None = Field(
        None, description="a train.yaml to start from (model/data are set by the loop)"
    )
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the train config")
    old_data: list[str] = Field(
        default_factory=list, description="SFT .jsonl the production version was trained on"
    )
    old_preferences: list[str] = Field(default_factory=list, description="preference .jsonl for DPO")
    min_new_examples: int = Field(1, ge=1, description="fewer curated examples: no retraining this cycle")
    validation: Literal["old_data", "none"] = Field(
        "old_data",
        description="the retrain's validation rows, set by the loop (never the gate's sets): a fixed sample "
        "of the old data (kept in training: its loss shows forgetting), or none",
    )
    validation_rows: int = Field(32, ge=1, description="rows in that sample")

    @field_validator("objectives")
    @classmethod
    def _order(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str):
            return v
        if not v:
            raise ValueError(
                "retrain.objectives is empty: list at least one of sft, dpo, kto (or write auto)"
            )
        if len(set(v)) != len(v):
            raise ValueError("retrain.objectives lists an objective twice")
        return sorted(v, key=OBJECTIVES.index)


class GateSettings(Config):
    frozen_eval: str = Field(
        ..., description="a frozen SFT .jsonl (messages, optional answer) never trained on"
    )
    metric: Literal["contains_answer", "token_f1", "rouge_l", "exact_match"] = "contains_answer"
    feedback_metric: Literal["auto", "contains_answer", "token_f1", "rouge_l", "exact_match"] = Field(
        "auto",
        description="score of the held-out new examples against their known facts; auto: contains_answer "
        "when every reference carries the fact's value (a number, a name), else token_f1",
    )
    margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="the lower confidence bound of the improvement where the new feedback is must be above "
        "this (0: shown better; a negative value: not worse by more than that)",
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="allowed drop on the frozen set: the lower confidence bound of the change must stay "
        "above -tolerance (n frozen questions cannot show a bound tighter than about 3/n)",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="two-sided level of every interval (each decision uses one side)"
    )
    min_examples: int = Field(
        30,
        ge=1,
        description="held-out new examples the gate needs (fewer: no retraining, the feedback stays for "
        "the next cycle); the frozen set needs as many questions",
    )
    bootstrap_resamples: int = Field(4000, ge=200, description="for scores that are not 0/1 (token F1)")
    seed: int = Field(0, description="of the bootstrap: the same scores always give the same decision")
    judge: JudgeConfig | None = Field(
        None,
        description="an LLM judge compares both models' answers to the held-out questions (both orders); "
        "its wins minus losses must be shown above gate.judge_margin (omit: no judge)",
    )
    judge_margin: float = Field(0.0, ge=-1, le=1, description="see gate.judge")
    tasks: list[str] = Field(
        default_factory=list,
        description="general-ability tasks (lm-evaluation-harness names or YAML files, e.g. "
        "[tuneloop_general]) run on both models; fails on a drop shown beyond gate.tasks_tolerance",
    )
    tasks_tolerance: float = Field(0.0, ge=0, le=1, description="see gate.tasks (0: any significant drop)")
    tasks_limit: int | None = Field(None, gt=0, description="examples per task (default: all)")
    max_samples: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(8, gt=0)
    device: str = "auto"


class CanarySettings(Config):
    enabled: bool = True
    gateway_url: str = Field("http://127.0.0.1:8000", description="the gateway (its /admin routes)")
    admin_key_env: str = Field("TUNELOOP_ADMIN_KEY", description="env var holding a key with the admin scope")
    route: str | None = Field(None, description="the route clients call (default: collect.served_name)")
    production_model: str = Field(..., description="served name following NAME@production")
    candidate_model: str = Field(..., description="served name following NAME@candidate")
    share: float = Field(0.1, gt=0, lt=1, description="share of traffic sent to the candidate")
    window: str = Field("30m", description="the least time it watches before promoting (30s, 15m, 2h)")
    max_wait: str | None = Field(
        "24h",
        description="no decision by then: roll back (a 10-point better thumbs-up rate takes ~8 h at 200 "
        "rated answers an hour with share 0.1: benchmarks/loop_decisions_sim.py; null: 4x window)",
    )
    poll: str = Field("5s", description="how often to look at the numbers (any number of looks is safe)")
    min_requests: int = Field(20, ge=1, description="candidate requests needed for any decision")
    min_feedback: int = Field(
        30,
        ge=0,
        description="rated answers each variant needs before ratings decide (0: promote on health "
        "alone, without evidence that the candidate is better)",
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="level of the confidence sequences: a wrong promotion or rollback at most 1 - "
        "confidence of the time, however often the loop looks",
    )
    rating_margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="promote when the thumbs-up rate's improvement is shown above this (0: shown "
        "better; -0.05: not worse by more than 5 points); roll back when shown below it",
    )
    max_error_rate: float = Field(
        0.05, ge=0, le=1, description="roll back when the candidate's error rate is shown above this"
    )
    max_error_increase: float = Field(
        0.0,
        ge=0,
        le=1,
        description="roll back when the candidate's error rate is shown above production's by more",
    )
    max_latency_ratio: float = Field(
        1.5, gt=0, description="roll back when the candidate's p95 latency is shown above this x production's"
    )
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout for admin calls")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "rating_tolerance" in data:
            raise ValueError(
                "canary.rating_tolerance (a drop of the mean 1-5 rating) is gone: the canary compares "
                "thumbs-up rates now; write canary.rating_margin (0: shown better, -0.05: at most 5 "
                "points worse)"
            )
        return data

    @field_validator("window", "poll", "max_wait")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None and _DURATION.match(str(v)) is None:
            raise ValueError(f"'{v}' is not a duration (write e.g. 30s, 15m, 2h)")
        return v

    def seconds(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            return 4 * parse_duration(self.window)
        return parse_duration(value, f"canary.{name}")


class LoopConfig(Config):
    collect: CollectSettings = Field(default_factory=CollectSettings)
    curate: CurateSettings = Field(default_factory=CurateSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    gate: GateSettings
    canary: CanarySettings | None = Field(None, description="omit to promote straight after the gate")
    tracking_uri: str | None = Field(
        None, description="the registry (default: MLflow SQLite in TUNELOOP_HOME)"
    )


def check_files(cfg: LoopConfig, where: str = "the loop config") -> None:
    """Every file the config names exists: fail in a second, not after an hour of training."""
    named = [("gate.frozen_eval", cfg.gate.frozen_eval), ("retrain.train_config", cfg.retrain.train_config)]
    named += [(f"curate.existing_data[{i}]", p) for i, p in enumerate(cfg.curate.existing_data)]
    named += [(f"retrain.old_data[{i}]", p) for i, p in enumerate(cfg.retrain.old_data)]
    named += [(f"retrain.old_preferences[{i}]", p) for i, p in enumerate(cfg.retrain.old_preferences)]

    for key, path in named:
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{where}: {key} '{path}' does not exist", hint=f"fix the path of {key}")
    for i, path in enumerate(cfg.curate.knowledge):
        if not Path(path).expanduser().exists():
            raise ConfigError(
                f"{where}: curate.knowledge[{i}] '{path}' does not exist",
                hint="list documents, or folders of documents, that the answers must agree with",
            )
