"""How much one API key's vote weighs in curation: little while it is new, more as it earns a record.

One key is one voter (filters.agree); this says how heavy. The loop keeps a record per key in
TUNELOOP_HOME/loop/NAME/raters.json: when it first saw a rating from the key, how many of the key's
votes sided with an item curation accepted (`agreed`), and how many sided with an item refuted by
evidence — a contradiction of known facts, an injection, abuse, the judge, a reviewer (`refuted`).

    p = (agreed + 1) / (agreed + refuted + 2)           the key's record, smoothed (new: 1/2)
    c = min(1, age / full_after) * n / (n + prior)      how much the record counts, n = agreed + refuted
    weight = (1 - c) * new_key_weight + c * p

A key the loop has never seen weighs `new_key_weight` (0.25); a month-old key with 50 accepted
votes ~0.9; a key whose votes keep being refuted sinks below a new one. Weights decide between
keys that disagree about one answer (the side with more weight wins, by `min_agreement` of the
total); a sybil key's many `user`s are still one vote, and its new weight loses to established keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop.loop.config import TrustSettings, parse_duration

# rejection reasons that show the voters were wrong (not merely outvoted or duplicated)
REFUTING = frozenset(
    {
        "prompt_injection",
        "abuse",
        "conflicts_with_training_data",
        "conflicts_with_frozen_set",
        "conflicts_with_documents",
        "judge_contradiction",
        "rejected_by_reviewer",
    }
)


@dataclass
class KeyRecord:
    first_seen: float
    agreed: int = 0
    refuted: int = 0


class Trust:
    def __init__(self, path: Path, settings: TrustSettings, now: float):
        self.path, self.s, self.now = path, settings, now
        raw = json.loads(path.read_text()) if path.is_file() else {}
        self.records = {k: KeyRecord(**v) for k, v in raw.items()}

    def weight(self, key: str) -> float:
        r = self.records.get(key)
        if r is None:
            return self.s.new_key_weight
        n = r.agreed + r.refuted
        p = (r.agreed + 1) / (n + 2)
        age = max(0.0, self.now - r.first_seen) / parse_duration(self.s.full_after, "curate.trust.full_after")
        c = min(1.0, age) * n / (n + self.s.prior)
        return (1 - c) * self.s.new_key_weight + c * p

    def weights(self, keys: set[str]) -> dict[str, float]:
        return {k: round(self.weight(k), 3) for k in sorted(keys)}

    def record(self, proposals: list[dict[str, Any]], rejected: list[dict[str, Any]], seen: set[str]) -> None:
        """After a cycle's curation: keys first seen, and each voter's side against the outcome."""
        for key in seen:
            self.records.setdefault(key, KeyRecord(self.now))
        for p in proposals:
            for key in _winners(p):
                self.records.setdefault(key, KeyRecord(self.now)).agreed += 1
        for r in rejected:
            if r.get("reason") in REFUTING:
                for key in _winners(r):
                    self.records.setdefault(key, KeyRecord(self.now)).refuted += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in sorted(self.records.items())}, indent=1))
        tmp.replace(self.path)


def _winners(item: dict[str, Any]) -> list[str]:
    """Keys that voted for what the item proposed (its winning side)."""
    votes: dict[str, str] = item.get("votes") or {}
    side = item.get("polarity")
    return [k for k, v in votes.items() if v == side]
