"""`diff A B`: what changed between two versions — resolved config keys, metrics (with deltas), lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from tuneloop.registry.lineage import METRIC_PREFIX

# tags that differ between any two versions and say nothing about how they differ
NOISE = (
    "tuneloop.manifest_sha256",
    "tuneloop.run_dir",
    "tuneloop.mlflow_run",
    "tuneloop.train_run_id",
    "tuneloop.source",
    "tuneloop.base_model.path",
)


@dataclass
class VersionDiff:
    a: str
    b: str
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    metrics: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)
    lineage: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "config": [{"key": k, "a": x, "b": y} for k, x, y in self.config],
            "metrics": [{"metric": k, "a": x, "b": y, "delta": d} for k, x, y, d in self.metrics],
            "lineage": [{"tag": k, "a": x, "b": y} for k, x, y in self.lineage],
        }


def diff_versions(
    a: str, b: str, tags_a: dict[str, str], tags_b: dict[str, str], config_a: str | None, config_b: str | None
) -> VersionDiff:
    out = VersionDiff(a, b)
    ca, cb = flatten(_yaml(config_a)), flatten(_yaml(config_b))
    out.config = [(k, ca.get(k), cb.get(k)) for k in sorted(ca.keys() | cb.keys()) if ca.get(k) != cb.get(k)]
    ma, mb = _metrics(tags_a), _metrics(tags_b)
    for k in sorted(ma.keys() | mb.keys()):
        x, y = ma.get(k), mb.get(k)
        if x != y:
            out.metrics.append((k, x, y, y - x if x is not None and y is not None else None))
    la, lb = _lineage(tags_a), _lineage(tags_b)
    out.lineage = [(k, la.get(k), lb.get(k)) for k in sorted(la.keys() | lb.keys()) if la.get(k) != lb.get(k)]
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _yaml(text: str | None) -> dict[str, Any]:
    data = yaml.safe_load(text) if text else None
    return data if isinstance(data, dict) else {}


def _metrics(tags: dict[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith(METRIC_PREFIX):
            try:
                out[k.removeprefix(METRIC_PREFIX)] = float(v)
            except ValueError:
                continue
    return out


def _lineage(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith(METRIC_PREFIX) and k not in NOISE}
