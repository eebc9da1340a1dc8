"""The Helm chart lints and renders with a real `helm` (v4), every rendered core manifest validates
against the Kubernetes OpenAPI schemas offline (kubernetes-validate), and the wiring is right:
probes, GPU resources, model-store volume, Secret, ConfigMap (a valid serve.yaml), HPA, ServiceMonitor,
and the Istio A/B example's subsets match the pods of the two releases."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tuneloop.config import load_config
from tuneloop.serve import ServeConfig

from .conftest import CHART, DEPLOY, RULES, require_tool

# The chart's minimum (Chart.yaml kubeVersion) and a current release.
K8S_VERSIONS = ("1.25.0", "1.33.0")
# Custom resources: their schemas come with the CRDs of their operators, not with Kubernetes, so
# kubernetes-validate has none. They are checked structurally below instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD",
    ("networking.istio.io/v1", "VirtualService"): "Istio CRD",
    ("networking.istio.io/v1", "DestinationRule"): "Istio CRD",
}
ISTIO = DEPLOY / "istio"


def helm(*args: str) -> str:
    out = subprocess.run([require_tool("helm"), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def render(*args: str, release: str = "tuneloop") -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` -> {(kind, name): manifest}."""
    docs = [d for d in yaml.safe_load_all(helm("template", release, str(CHART), *args)) if d]
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two manifests with the same kind and name"
    return out


def validate(manifests: list[dict[str, Any]]) -> list[str]:
    """Validate core kinds against each Kubernetes version; returns the CRD kinds it skipped."""
    skipped = []
    for m in manifests:
        if (m["apiVersion"], m["kind"]) in CRD_KINDS:
            skipped.append(m["kind"])
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(m, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{m['kind']}/{m['metadata']['name']} invalid for Kubernetes {version}: {e.message}"
                )
    return skipped


VALUE_SETS = {
    "defaults": [],
    "production": ["-f", str(ISTIO / "values-production.yaml")],
    "canary": ["-f", str(ISTIO / "values-canary.yaml")],
    "cpu, no extras": [
        "--set", "gpu.enabled=false", "--set", "autoscaling.enabled=false", "--set", "persistence.enabled=false",
        "--set", "serviceMonitor.enabled=false", "--set", "replicaCount=2",
    ],
    "everything": [
        "--set", "secret.databaseUrl=postgresql+psycopg://u:p@db:5432/tuneloop", "--set", "secret.env.HF_TOKEN=x",
        "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true", "--set", "track=canary",
        "--set", "gpu.count=2", "--set", "gpu.resourceName=nvidia.com/mig-3g.40gb",
        "--set", "serviceMonitor.labels.release=kube-prometheus-stack", "--set", "extraArgs[0]=limits.max_n=4",
    ],
}  # fmt: skip


def test_helm_lint_strict():
    out = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_renders_and_validates_against_kubernetes_schemas(name: str):
    manifests = render(*VALUE_SETS[name])
    skipped = validate(list(manifests.values()))
    crds = {kind for (kind, _) in manifests if kind in {k for _, k in CRD_KINDS}}
    assert set(skipped) == crds
    kinds = {kind for kind, _ in manifests}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    # serve.yaml in the ConfigMap is a valid config for the real server
    [config] = [m for (k, _), m in manifests.items() if k == "ConfigMap" and "serve.yaml" in m["data"]]
    load_config(ServeConfig, yaml.safe_load(config["data"]["serve.yaml"]))


def _deployment(manifests) -> dict[str, Any]:
    [dep] = [m for (k, _), m in manifests.items() if k == "Deployment"]
    return dep


def test_default_wiring():
    m = render()
    dep = _deployment(m)
    pod = dep["spec"]["template"]
    [c] = pod["spec"]["containers"]
    assert c["args"][:3] == ["serve", "--config", "/etc/tuneloop/serve.yaml"]
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "TUNELOOP_HOME", "value": "/data"} in c["env"]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts["data"] == "/data" and mounts["config"] == "/etc/tuneloop"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    pvc = m[("PersistentVolumeClaim", "tuneloop-data")]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == "tuneloop-config"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] != 0
    assert "replicas" not in dep["spec"]  # the HPA owns it
    # the Service and the ServiceMonitor find the pods and their port
    svc = m[("Service", "tuneloop")]
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"] == "http"
    sm = m[("ServiceMonitor", "tuneloop")]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    hpa = m[("HorizontalPodAutoscaler", "tuneloop")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tuneloop",
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "tuneloop_requests_in_flight"
    # the adapter values serve exactly that metric name
    adapter = yaml.safe_load((DEPLOY / "helm" / "prometheus-adapter-values.yaml").read_text())
    assert "tuneloop_requests_in_flight" in {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert ("Secret", "tuneloop") not in m  # nothing secret configured: no empty Secret


def test_secret_gpu_and_monitoring_options():
    m = render(*VALUE_SETS["everything"])
    dep = _deployment(m)
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "2"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    secret = m[("Secret", "tuneloop")]
    assert secret["stringData"] == {
        "database-url": "postgresql+psycopg://u:p@db:5432/tuneloop",
        "HF_TOKEN": "x",
    }
    env = {e["name"]: e for e in c["env"]}
    assert env["TUNELOOP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tuneloop",
        "key": "database-url",
    }
    assert "auth.database_url=$(TUNELOOP_DATABASE_URL)" in c["args"]  # kubelet expands $(VAR) in args
    assert c["args"][-1] == "limits.max_n=4"
    assert c["envFrom"] == [{"secretRef": {"name": "tuneloop"}}]
    # the PrometheusRule carries exactly the rule file that promtool checks
    rule = m[("PrometheusRule", "tuneloop")]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboard = m[("ConfigMap", "tuneloop-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["tuneloop.json"] == (
        DEPLOY / "grafana" / "dashboards" / "tuneloop.json"
    ).read_text().rstrip("\n")
    # A/B across releases: unrouted requests' variant becomes this release's track
    sm = m[("ServiceMonitor", "tuneloop")]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [relabel] = sm["spec"]["endpoints"][0]["metricRelabelings"]
    assert relabel == {
        "sourceLabels": ["variant"],
        "regex": "default",
        "targetLabel": "variant",
        "replacement": "canary",
    }


def test_cpu_without_gpu_autoscaling_or_volume():
    m = render(*VALUE_SETS["cpu, no extras"])
    dep = _deployment(m)
    spec = dep["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert not any(k.startswith("nvidia.com/") for k in c["resources"].get("limits", {}))
    assert c["image"].endswith(":cpu-0.1.0")
    assert "tolerations" not in spec
    assert dep["spec"]["replicas"] == 2
    assert {v["name"]: v for v in spec["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    assert not {k for k, _ in m} & {"HorizontalPodAutoscaler", "PersistentVolumeClaim", "ServiceMonitor"}


def test_istio_ab_example_routes_to_the_two_releases():
    docs = [d for d in yaml.safe_load_all((ISTIO / "ab-routing.yaml").read_text()) if d]
    assert validate(docs) == ["DestinationRule", "VirtualService"]  # the Service validated, CRDs skipped
    by_kind = {d["kind"]: d for d in docs}
    service, rule, vs = by_kind["Service"], by_kind["DestinationRule"], by_kind["VirtualService"]
    weights = [r["weight"] for r in vs["spec"]["http"][-1]["route"]]
    assert sum(weights) == 100 and len(weights) == 2
    subsets = {s["name"]: s["labels"] for s in rule["spec"]["subsets"]}
    routed = {r["destination"]["subset"] for h in vs["spec"]["http"] for r in h["route"]}
    assert routed == set(subsets) == {"production", "canary"}
    assert rule["spec"]["host"] == service["metadata"]["name"] in vs["spec"]["hosts"]
    for track in ("production", "canary"):
        release = f"tuneloop-{track}"
        m = render("-f", str(ISTIO / f"values-{track}.yaml"), release=release)
        pod_labels = _deployment(m)["spec"]["template"]["metadata"]["labels"]
        assert subsets[track].items() <= pod_labels.items()  # the subset selects this release's pods
        assert service["spec"]["selector"].items() <= pod_labels.items()  # the shared Service too
        if track == "canary":  # it mounts the production release's model store
            claim = {v["name"]: v for v in _deployment(m)["spec"]["template"]["spec"]["volumes"]}["data"]
            assert claim["persistentVolumeClaim"]["claimName"] == "tuneloop-production-data"
            assert ("PersistentVolumeClaim", "tuneloop-production-data") not in m
        else:
            assert ("PersistentVolumeClaim", "tuneloop-production-data") in m


def test_chart_files_link_to_the_checked_rules_and_dashboard():
    for name, target in (
        ("tuneloop.rules.yaml", RULES),
        ("tuneloop.json", DEPLOY / "grafana/dashboards/tuneloop.json"),
    ):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert Path(link).read_text() == target.read_text()
