"""`tuneloop registry ...` through the real CLI app (CliRunner): output, exit codes, no tracebacks."""

from __future__ import annotations

import json
import shutil

import yaml
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["registry", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def test_register_promote_rollback_history_through_the_cli(adapter_run):
    assert "registered acme/1 (adapter on tiny-llama/1)" in cli(
        "register", str(adapter_run), "--name", "acme"
    )
    cli("register", str(adapter_run), "--name", "acme", "--description", "second try")
    cli("promote", "acme", "1", "--alias", "production")
    assert "acme@production -> acme/2" in cli("promote", "acme", "2")
    assert "rolled back to acme/1" in cli("rollback", "acme")
    listed = json.loads(cli("list", "--json"))
    assert {r["name"]: (r["latest"], r["aliases"]) for r in listed} == {
        "acme": (2, {"production": 1}), "tiny-llama": (1, {}),
    }  # fmt: skip
    entries = json.loads(cli("history", "acme", "--json"))
    assert [(e["action"], e["version"]) for e in entries] == [("promote", 1), ("promote", 2), ("rollback", 1)]
    shown = cli("show", "acme@production")
    assert "acme/1" in shown and "dataset.fingerprint" in shown and "adapter_model.safetensors" in shown
    assert "rollback" in shown  # the alias history is part of `show`


def test_show_json_has_lineage_metrics_and_files(adapter_run):
    cli("register", str(adapter_run), "--name", "acme")
    d = json.loads(cli("show", "acme", "--json"))
    assert d["ref"] == "acme/1" and d["tags"]["tuneloop.base"] == "tiny-llama/1"
    assert "eval/perplexity" in d["metrics"] and "model/adapter_model.safetensors" in d["files"]


def test_diff_prints_the_changed_config_key_and_metric_delta(adapter_run, tmp_path):
    changed = tmp_path / "run-b"
    shutil.copytree(adapter_run, changed)
    cfg = yaml.safe_load((changed / "config.yaml").read_text())
    cfg["lora"]["rank"] = 32
    (changed / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = json.loads((changed / "metrics.json").read_text())
    metrics["final_train_loss"] += 0.5
    (changed / "metrics.json").write_text(json.dumps(metrics))
    cli("register", str(adapter_run), "--name", "acme")
    cli("register", str(changed), "--name", "acme")
    out = cli("diff", "acme/1", "acme/2")
    assert "lora.rank: 16 -> 32" in out
    assert "final_train_loss: " in out and "(+0.5)" in out


def test_user_mistakes_exit_2_with_a_hint(adapter_run, tmp_path):
    cli("register", str(adapter_run), "--name", "acme")
    cli("promote", "acme", "1", "--alias", "production")
    assert "did you mean 'acme'" in cli("show", "acm", code=2)
    assert "versions: 1" in cli("promote", "acme", "5", code=2)
    assert "alias 'production' points at it" in cli("delete", "acme", "1", code=2)
    assert "run.json is missing" in cli("register", str(tmp_path), "--name", "x", code=2)
    assert "no earlier version" in cli("rollback", "acme", code=2)
