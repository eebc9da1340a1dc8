"""The chart's multi-node training job (training.enabled): an Indexed Job of one pod per node meeting
at a c10d rendezvous on pod 0 through a headless Service, its train.yaml a valid TrainConfig, the
shared model-store volume for checkpoints, preemptions not counted against backoffLimit; off by
default; every manifest valid for the Kubernetes versions the serving chart is checked against."""

from __future__ import annotations

import yaml

from tuneloop.config import load_config
from tuneloop.train.config import TrainConfig

from .test_helm import render, validate

ON = ["--set", "training.enabled=true", "--set", "training.nodes=4", "--set", "training.gpusPerNode=8"]


def test_training_job_is_off_by_default():
    assert not [key for key in render() if key[0] == "Job" or key[1].endswith("-train")]


def test_training_job_renders_valid_manifests_and_wires_the_rendezvous():
    m = render(*ON)
    validate(list(m.values()))
    job, svc = m[("Job", "tuneloop-train")], m[("Service", "tuneloop-train")]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]
    }  # fmt: skip
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    # the gateway's Service must not pick training pods
    assert not m[("Service", "tuneloop")]["spec"]["selector"].items() <= labels.items()
    [c] = pod["containers"]
    args = c["args"]
    at = {
        flag: args[args.index(flag) + 1]
        for flag in ("--nnodes", "--nproc", "--rdzv-endpoint", "--max-restarts")
    }
    assert at == {"--nnodes": "4", "--nproc": "8", "--rdzv-endpoint": "tuneloop-train-0.tuneloop-train:29400",
                  "--max-restarts": "10"}  # fmt: skip
    assert "resume=auto" in args and "output_dir=/data/runs/tuneloop-train" in args
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "tuneloop-data"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    # the ConfigMap's train.yaml is a valid training config, with the overrides the pod adds
    config = yaml.safe_load(m[("ConfigMap", "tuneloop-train-config")]["data"]["train.yaml"])
    overrides = [a for a in args[2 : args.index("--nnodes")]]
    cfg = load_config(TrainConfig, config, overrides)
    assert cfg.resume.checkpoint == "auto" and cfg.checkpoint.every == 200


def test_training_on_cpu_runs_one_process_per_pod_without_gpu_limits():
    m = render(*ON, "--set", "gpu.enabled=false", "--set", "training.config.optim.lr=0.0001")
    validate(list(m.values()))
    [c] = m[("Job", "tuneloop-train")]["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--nproc") + 1] == "1"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    config = yaml.safe_load(m[("ConfigMap", "tuneloop-train-config")]["data"]["train.yaml"])
    assert load_config(TrainConfig, config).optim.lr == 1e-4
