"""The alert rules and the Prometheus config pass promtool's checks and unit tests."""

from __future__ import annotations

import subprocess

import yaml

from .conftest import DEPLOY, RULE_TESTS, RULES, require_tool


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    out = _promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 14 rules found" in out.stdout


def test_promtool_check_config_of_the_compose_prometheus():
    out = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout  # rule_files resolves to the rules above


def test_promtool_unit_tests_of_the_alerts():
    out = _promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_in_which_it_fires():
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert {
        "TuneloopHighP99Latency",
        "TuneloopHigh5xxRate",
        "TuneloopQueueSaturated",
        "TuneloopCanaryErrorRate",
        "TuneloopCanaryLatency",
        "TuneloopCanaryFeedbackWorse",
    } <= alerts
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= fired, f"alerts never shown firing in a promtool test: {sorted(alerts - fired)}"


def test_a_broken_threshold_fails_the_unit_tests(tmp_path):
    """The unit tests are sensitive: a 5xx threshold of 10% instead of 1% makes them fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    assert text.count("          > 0.01\n") == 1
    (tmp_path / "rules" / RULES.name).write_text(text.replace("          > 0.01\n", "          > 0.10\n"))
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    out = _promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert out.returncode != 0 and "TuneloopHigh5xxRate" in out.stdout + out.stderr
