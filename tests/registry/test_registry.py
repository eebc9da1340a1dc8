"""The registry on a real MLflow (SQLite in the test's TUNELOOP_HOME): versions, lineage, aliases."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml

from tuneloop import __version__, paths
from tuneloop.errors import ModelNotFoundError, TuneloopError
from tuneloop.models.store import sha256_file
from tuneloop.registry import ModelVersionInfo


def test_register_promote_rollback_and_history(registry, adapter_run):
    v1 = registry.register_run(adapter_run, "acme", "first")
    v2 = registry.register_run(adapter_run, "acme")
    assert isinstance(v1, ModelVersionInfo) and (v1.version, v2.version) == (1, 2)
    registry.promote("acme", 1, "production")
    registry.promote("acme", 2, "production")
    registry.promote("acme", 2, "candidate")
    assert registry.get("acme@production").version == 2
    assert registry.rollback("acme") == 1
    assert registry.get("acme@production").version == 1 and registry.get("acme@candidate").version == 2
    history = [(e["alias"], e["action"], e["version"], e["previous"]) for e in registry.history("acme")]
    assert history == [
        ("production", "promote", 1, None),
        ("production", "promote", 2, 1),
        ("candidate", "promote", 2, None),
        ("production", "rollback", 1, 2),
    ]
    with pytest.raises(TuneloopError, match="no earlier version"):
        registry.rollback("acme")  # 1 was the first production version


def test_rollback_walks_back_through_several_promotions_and_skips_deleted_versions(registry, adapter_run):
    for _ in range(4):
        registry.register_run(adapter_run, "acme")
    for v in (1, 2, 3, 4):
        registry.promote("acme", v, "production")
    registry.delete("acme", 3)
    assert registry.rollback("acme") == 2  # 3 is gone
    assert registry.rollback("acme") == 1


def test_lineage_tags_round_trip_the_run_folder(registry, adapter_run, tiny_llama):
    info = registry.register_run(adapter_run, "acme")
    tags = registry.get("acme/1").tags
    run = json.loads((adapter_run / "run.json").read_text())
    metrics = json.loads((adapter_run / "metrics.json").read_text())
    config_text = (adapter_run / "config.yaml").read_text()
    assert tags["tuneloop.base_model.reference"] == run["base_model"]["reference"] == str(tiny_llama)
    assert tags["tuneloop.base_model.sha256"] == sha256_file(tiny_llama / "model.safetensors")
    assert tags["tuneloop.dataset.fingerprint"] == run["dataset"]["fingerprint"]
    assert tags["tuneloop.config.sha256"] == hashlib.sha256(config_text.encode()).hexdigest()
    assert tags.get("tuneloop.git_commit") == run["git_commit"]
    assert tags["tuneloop.version"] == __version__ and tags["tuneloop.kind"] == "adapter"
    evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    assert evals and all(float(tags[f"tuneloop.metric.{k}"]) == v for k, v in evals.items())
    assert tags["tuneloop.weights_sha256"] == sha256_file(adapter_run / "model" / "adapter_model.safetensors")
    stored = info.path.parent / "run" / "config.yaml"
    assert yaml.safe_load(stored.read_text()) == yaml.safe_load(config_text)
    manifest = json.loads((info.path.parent / "tuneloop-manifest.json").read_text())["files"]
    assert manifest["run/metrics.json"]["sha256"] == sha256_file(adapter_run / "metrics.json")
    assert {"model/adapter_model.safetensors", "model/adapter_config.json", "run/run.json"} <= manifest.keys()


def test_artifacts_live_in_the_local_artifact_root_under_tuneloop_home(registry, adapter_run):
    registry.register_run(adapter_run, "acme")
    stored = list((paths.home() / "artifacts" / "registry").rglob("adapter_model.safetensors"))
    assert len(stored) == 1
    assert sha256_file(stored[0]) == sha256_file(adapter_run / "model" / "adapter_model.safetensors")


def test_adapter_base_is_registered_once_and_deduplicated_by_weights(registry, adapter_run, tiny_llama):
    registry.register_folder(tiny_llama, "my-base")
    a = registry.register_run(adapter_run, "acme")
    b = registry.register_run(adapter_run, "other")
    assert a.tags["tuneloop.base"] == b.tags["tuneloop.base"] == "my-base/1"
    assert registry.names() == ["acme", "my-base", "other"]  # no second copy of the base
    stored = json.loads((a.path / "adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == "my-base/1"
    original = json.loads((adapter_run / "model" / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] == str(tiny_llama)  # the run folder is left alone


def test_register_folder_links_a_derived_version_to_its_parent(registry, adapter_run, tiny_llama):
    registry.register_run(adapter_run, "acme")
    child = registry.register_folder(tiny_llama, "acme-merged", parent="acme/1",
                                     tags={"tuneloop.export.method": "merge"})  # fmt: skip
    assert child.tags["tuneloop.parent"] == "acme/1" and child.tags["tuneloop.kind"] == "model"
    assert child.tags["tuneloop.export.method"] == "merge"
    parent = registry.get("acme/1").tags
    assert child.tags["tuneloop.dataset.fingerprint"] == parent["tuneloop.dataset.fingerprint"]
    assert "tuneloop.metric.eval/perplexity" not in child.tags  # metrics belong to the parent's weights
    assert registry.get("acme-merged").version == 1
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        registry.register_folder(tiny_llama, "acme-merged", parent="acme/7")


def test_delete_is_refused_while_an_alias_points_at_the_version(registry, adapter_run):
    registry.register_run(adapter_run, "acme")
    registry.register_run(adapter_run, "acme")
    registry.promote("acme", 1, "production")
    with pytest.raises(TuneloopError, match="alias 'production' points at it"):
        registry.delete("acme", 1)
    with pytest.raises(TuneloopError, match="base model of adapter version"):
        registry.delete("tiny-llama", 1)
    registry.promote("acme", 2, "production")
    registry.delete("acme", 1)
    with pytest.raises(ModelNotFoundError) as err:
        registry.get("acme/1")
    assert "versions: 2" in str(err.value)


def test_tampered_artifact_in_the_store_is_refused_naming_the_file(registry, adapter_run):
    info = registry.register_run(adapter_run, "acme")
    stored = next((paths.home() / "artifacts" / "registry").rglob("adapter_model.safetensors"))
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    shutil.rmtree(info.path.parent)  # no cached copy: the next load downloads the tampered file
    with pytest.raises(TuneloopError, match=r"checksum mismatch in model/adapter_model\.safetensors"):
        registry.get("acme/1")
    assert not info.path.parent.exists()  # nothing unverified was left in the cache


def test_tampering_with_file_and_manifest_together_is_still_caught(registry, adapter_run):
    info = registry.register_run(adapter_run, "acme")
    run_id = registry.version("acme/1").run_id
    stored = paths.home() / "artifacts" / "registry" / run_id / "artifacts"
    (stored / "model" / "adapter_config.json").write_text("{}")
    manifest = json.loads((stored / "tuneloop-manifest.json").read_text())
    manifest["files"]["model/adapter_config.json"] = {"sha256": hashlib.sha256(b"{}").hexdigest(), "size": 2}
    (stored / "tuneloop-manifest.json").write_text(
        json.dumps(manifest)
    )  # consistent, but not the registered one
    shutil.rmtree(info.path.parent)
    with pytest.raises(TuneloopError, match=r"checksum mismatch in tuneloop-manifest\.json"):
        registry.get("acme/1")


def test_a_changed_cached_copy_is_replaced_by_a_verified_download(registry, adapter_run):
    info = registry.register_run(adapter_run, "acme")
    weights = info.path / "adapter_model.safetensors"
    good = sha256_file(weights)
    weights.write_bytes(b"garbage")
    assert sha256_file(registry.get("acme/1").path / "adapter_model.safetensors") == good


def test_unknown_names_versions_and_aliases_list_what_exists(registry, adapter_run):
    registry.register_run(adapter_run, "acme")
    registry.promote("acme", 1, "staging")
    with pytest.raises(ModelNotFoundError, match="did you mean 'acme'") as err:
        registry.get("acne")
    assert "acme, tiny-llama" in err.value.hint
    with pytest.raises(ModelNotFoundError, match="no alias 'production'") as err:
        registry.get("acme@production")
    assert "staging -> 1" in err.value.hint
    with pytest.raises(ModelNotFoundError, match="no version 3"):
        registry.promote("acme", 3, "production")
    with pytest.raises(TuneloopError, match="not a valid alias"):
        registry.promote("acme", 1, "latest")


def test_a_folder_that_is_not_a_run_is_refused_naming_what_is_missing(registry, tmp_path, adapter_run):
    with pytest.raises(TuneloopError, match=r"run\.json is missing"):
        registry.register_run(tmp_path, "acme")
    broken = tmp_path / "broken"
    shutil.copytree(adapter_run, broken)
    run = json.loads((broken / "run.json").read_text())
    del run["dataset"]
    (broken / "run.json").write_text(json.dumps(run))
    with pytest.raises(TuneloopError, match="field 'dataset'"):
        registry.register_run(broken, "acme")
    with pytest.raises(TuneloopError, match="not a valid registered model name"):
        registry.register_run(adapter_run, "bad/name")
    assert registry.names() == []


def test_diff_shows_a_changed_config_key_and_the_metric_delta(registry, adapter_run, tmp_path):
    from tuneloop.registry.views import diff

    changed = tmp_path / "run-b"
    shutil.copytree(adapter_run, changed)
    cfg = yaml.safe_load((changed / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.002
    (changed / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = json.loads((changed / "metrics.json").read_text())
    before = metrics["eval/perplexity"]
    metrics["eval/perplexity"] = before - 10.0
    (changed / "metrics.json").write_text(json.dumps(metrics))
    registry.register_run(adapter_run, "acme")
    registry.register_run(changed, "acme")
    d = diff(registry, "acme/1", "acme/2")
    assert ("optim.lr", 0.001, 0.002) in d.config and len(d.config) == 1
    (row,) = [m for m in d.metrics if m[0] == "eval/perplexity"]
    assert row[1] == pytest.approx(before) and row[3] == pytest.approx(-10.0)
    assert any(k == "tuneloop.config.sha256" for k, _, _ in d.lineage)
