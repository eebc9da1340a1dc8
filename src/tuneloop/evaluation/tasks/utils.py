"""Data loading and scoring for tuneloop's shipped lm-evaluation-harness tasks (the YAML files here).

The data lives beside the YAML files, so the tasks run offline from any working directory: the
YAMLs name their file in `dataset_kwargs.file` and `load` reads it relative to this folder.
Short answers are scored against a list of accepted answers, after normalization (NFKC, case,
punctuation, whitespace, English articles): `exact_match` when the whole answer is one of them,
`contains` when one of them occurs in it (as whole words in English).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def load(file: str, **_metadata: Any) -> datasets.DatasetDict:
    """The task's JSONL file (beside this module) as the harness's `test` split."""
    path = HERE / file
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), lower case, no punctuation, no English articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(
        " " if unicodedata.category(c).startswith("P") or c in string.punctuation else c for c in text
    )
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains(answer: str, prediction: str) -> bool:
    if not answer:
        return False
    if answer.isascii():  # English and numbers: whole words only ("6" is not in "16")
        return re.search(rf"(?<![\w]){re.escape(answer)}(?![\w])", prediction) is not None
    return answer in prediction  # Chinese has no spaces between words


def process_short_answer(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Per-document scores of one generated answer against the document's accepted answers."""
    prediction = normalize(results[0])
    answers = [normalize(a) for a in doc["answers"]]
    return {
        "exact_match": int(prediction in answers),
        "contains": int(any(_contains(a, prediction) for a in answers)),
    }
