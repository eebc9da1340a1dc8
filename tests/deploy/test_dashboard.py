"""The Grafana dashboard is well-formed: unique ids, panels on the grid without overlaps, every query
on the datasource variable, only defined variables, and the panels the issue asks for."""

from __future__ import annotations

import json
import re

from .conftest import DASHBOARD


def test_dashboard_structure():
    board = json.loads(DASHBOARD.read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "model", "variant"}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used <= variables, (p["title"], used)
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("qps", "error rate", "p50 / p99", "first token", "tokens/s", "queue", "kv-cache"):
        assert wanted in titles, wanted
    per_variant = [p for p in panels if p["type"] == "timeseries" and "per variant" in p["title"].lower()]
    assert len(per_variant) >= 3
    for p in per_variant:
        assert all("variant" in t["expr"] for t in p["targets"]), p["title"]
