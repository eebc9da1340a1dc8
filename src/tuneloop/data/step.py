"""Pipeline steps (datatrove-style): small generators over `Doc`s with one override point each.

The base class counts what went in and out and records why each dropped document was dropped, so
every step's numbers land in the manifest without the step doing any bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tuneloop.data.document import Doc
from tuneloop.data.stats import Stats


class Step:
    name = "step"

    def __call__(self, docs: Iterable[Doc], stats: Stats) -> Iterator[Doc]:
        for doc in docs:
            out = self.process(doc, stats)
            if out is not None:
                stats.counts[self.name] += 1
                yield out

    def process(self, doc: Doc, stats: Stats) -> Doc | None:
        raise NotImplementedError


class Filter(Step):
    """Keep a document unless `reason(doc)` names why not."""

    def process(self, doc: Doc, stats: Stats) -> Doc | None:
        why = self.reason(doc)
        if why is None:
            return doc
        stats.drop(f"{self.name}.{why}")
        return None

    def reason(self, doc: Doc) -> str | None:
        raise NotImplementedError
