"""`LoopConfig`: what one feedback-loop cycle collects, keeps, trains, gates and canaries (loop.yaml).

tuneloop loop run --model acme-support --config loop.yaml gate.margin=0.05 canary.share=0.2
"""

from __future__ import annotations

import functools
import re
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


class CurateSettings(Config):
    pii: Literal["redact", "drop", "off"] = "redact"
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


class RetrainSettings(Config):
    objectives: list[Literal["sft", "dpo"]] = Field(default_factory=lambda: ["sft"], min_length=1)
    train_config: str | None = Field(
        None, description="a train.yaml to start from (model/data are set by the loop)"
    )
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the train config")
    old_data: list[str] = Field(
        default_factory=list, description="SFT .jsonl the production version was trained on"
    )
    old_preferences: list[str] = Field(default_factory=list, description="preference .jsonl for DPO")
    min_new_examples: int = Field(1, ge=1, description="fewer curated examples: no retraining this cycle")

    @field_validator("objectives")
    @classmethod
    def _order(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("retrain.objectives lists an objective twice")
        return sorted(v, key=["sft", "dpo"].index)


class GateSettings(Config):
    frozen_eval: str = Field(
        ..., description="a frozen SFT .jsonl (messages, optional answer) never trained on"
    )
    metric: Literal["contains_answer", "token_f1", "rouge_l", "exact_match"] = "contains_answer"
    feedback_metric: Literal["token_f1", "rouge_l", "exact_match"] = "token_f1"
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
    from pathlib import Path

    for key, path in named:
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{where}: {key} '{path}' does not exist", hint=f"fix the path of {key}")
