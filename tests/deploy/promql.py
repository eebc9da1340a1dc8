"""Metric names referenced by a PromQL expression (a small scanner, enough for our dashboards and rules).

Strings, label matchers `{...}`, ranges `[...]`, grouping clauses `by (...)`, `on (...)`, ... and
Grafana/adapter template variables are removed (and the label argument of Grafana's label_values); what remains that is neither a function call, a
keyword nor a number is a metric name (recorded names included: the caller subtracts those).
"""

from __future__ import annotations

import re

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = re.sub(r"<<[^>]*>>", "", expr)  # prometheus-adapter templates
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = _STRING.sub('""', text)
    text = re.sub(r"label_values\(([^,()]*(?:\{[^}]*\})?[^,()]*),\s*\w+\s*\)", r"(\1)", text)  # Grafana
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _CLAUSE.sub(" ", text)
    names = set()
    for m in _TOKEN.finditer(text):
        word = m.group(0)
        after = text[m.end() :].lstrip()
        if word.lower() in KEYWORDS or after.startswith("("):
            continue  # a keyword or a function call
        if re.fullmatch(r"\d+[smhdwy]", word) or word.startswith(":"):
            continue
        names.add(word)
    return names
