"""`Stats`: what each step saw, kept and dropped (and why), mergeable across workers and engines.

Like datatrove's step stats: every drop has a reason `step.reason`, every skipped input has a file,
a line and a reason, so nothing is ever lost silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Skip:
    """An input (a file or one line of it) that could not be read."""

    file: str
    line: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


SKIPS_KEPT = 1000  # per file/worker: the manifest lists the first ones (by file, line), counts all
PII_EXAMPLES_KEPT = 20  # per PII type: the first ones in document order, whatever the worker count


@dataclass
class Stats:
    counts: Counter[str] = field(default_factory=Counter)  # documents seen at each stage
    removed: Counter[str] = field(default_factory=Counter)  # "step.reason" -> documents dropped
    pii: Counter[str] = field(default_factory=Counter)  # type -> matches found
    # type -> [(order key, doc id, masked context)], the k smallest keys: same for any worker count
    pii_examples: dict[str, list[tuple[list[int], str, str]]] = field(default_factory=dict)
    skips: list[Skip] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # one entry per input file, with sha256
    bytes_read: int = 0
    skipped: int = 0  # all skips, also those beyond SKIPS_KEPT (a file of a million bad lines stays small)

    def drop(self, reason: str, n: int = 1) -> None:
        self.removed[reason] += n

    def skip(self, file: str, line: int | None, reason: str) -> None:
        self.skipped += 1
        if len(self.skips) < SKIPS_KEPT:
            self.skips.append(Skip(file, line, reason))

    def pii_example_wanted(self, kind: str, key: list[int], k: int) -> bool:
        """Whether an example at `key` (file, record, field, offset) is among the first `k` of its type."""
        have, k = self.pii_examples.get(kind, []), min(k, PII_EXAMPLES_KEPT)
        return len(have) < k or (k > 0 and key < have[-1][0])

    def add_pii_example(self, kind: str, key: list[int], doc_id: str, context: str, k: int) -> None:
        have = self.pii_examples.setdefault(kind, [])
        have.append((key, doc_id, context))
        have.sort()
        del have[min(k, PII_EXAMPLES_KEPT) :]

    def merge(self, other: Stats) -> Stats:
        self.counts.update(other.counts)
        self.removed.update(other.removed)
        self.pii.update(other.pii)
        for kind, items in other.pii_examples.items():
            have = sorted(self.pii_examples.get(kind, []) + [(list(k), i, c) for k, i, c in items])
            self.pii_examples[kind] = have[:PII_EXAMPLES_KEPT]
        self.skips.extend(other.skips)
        self.inputs.extend(other.inputs)
        self.bytes_read += other.bytes_read
        self.skipped += other.skipped
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "removed": dict(self.removed),
            "pii": dict(self.pii),
            "pii_examples": self.pii_examples,
            "skips": [s.to_json() for s in self.skips],
            "inputs": self.inputs,
            "bytes_read": self.bytes_read,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        examples = {k: [(list(key), i, c) for key, i, c in v] for k, v in data["pii_examples"].items()}
        return cls(
            Counter(data["counts"]),
            Counter(data["removed"]),
            Counter(data["pii"]),
            examples,
            [Skip(**s) for s in data["skips"]],
            data["inputs"],
            data["bytes_read"],
            data["skipped"],
        )
