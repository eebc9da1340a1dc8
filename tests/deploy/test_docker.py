"""The images install tuneloop the way the README does (no Docker engine here: the Dockerfiles, the
compose file and their configs are parsed and checked against the repository and the real CLI)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer
import yaml

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.serve import ServeConfig

from .conftest import DEPLOY, ROOT

DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "cuda": DEPLOY / "docker" / "Dockerfile.cuda"}
COMPOSE = DEPLOY / "docker-compose.yaml"


# ---------------------------------------------------------------- pip command lines


def pip_install(words: list[str]) -> dict:
    """What a `pip install ...` installs: constraints files, the project target, extras, editable."""
    i = words.index("install")
    args, out = words[i + 1 :], {"constraints": [], "target": None, "extras": None, "editable": False}
    it = iter(args)
    for a in it:
        if a in ("-c", "--constraint"):
            out["constraints"].append(next(it))
        elif a in ("-e", "--editable"):
            out["editable"] = True
        elif a.startswith("-"):
            if a in ("--index-url", "-i", "--extra-index-url", "--find-links", "-f"):
                next(it)
        elif re.fullmatch(r"\.\[[^\]]*\]", a) or a == ".":
            out["target"] = "."
            out["extras"] = set(a[2:-1].split(",")) if "[" in a else set()
    return out


def makefile_install(extras_variable: str = "EXTRAS") -> dict:
    """The Makefile's install of the project (`$*`, the stamp's extras, as `make setup` or `make
    quickstart` names them), with the Makefile's variables expanded."""
    text = (ROOT / "Makefile").read_text().replace("$*", f"$({extras_variable})")
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*)$", text, flags=re.M))

    def expand(s: str) -> str:
        s = re.sub(r"\$\(if [^()]*(?:\([^()]*\))?[^()]*\)", "", s)  # $(if $(wildcard /opt/wheels),...)
        for _ in range(5):
            s = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), s)
        return s

    lines = [
        expand(part)
        for line in text.splitlines()
        for part in line.split(";")
        if "pip install" in part and ".[" in part
    ]
    assert len(lines) == 1, lines
    return pip_install(shlex.split(lines[0]))


def readme_install() -> dict:
    """The README's full install (`pip install ... '.[all]'`)."""
    text = (ROOT / "README.md").read_text()
    commands = [c for c in re.findall(r"`([^`]*pip install[^`]*)`", text) if "[all" in c]
    assert commands, "the README shows no `pip install ... '.[all]'`"
    installs = [pip_install(shlex.split(c)) for c in commands]
    assert all(i["extras"] == installs[0]["extras"] for i in installs), installs
    assert "constraints.txt" in text  # the README explains the constraints file the Makefile passes
    return installs[0]


# ---------------------------------------------------------------- Dockerfile parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [x for x in path.read_text().splitlines() if not x.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def pip_installs(path: Path) -> list[dict]:
    args = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    found = []
    for word, rest in instructions(path):
        if word != "RUN":
            continue
        for command in rest.split("&&"):
            if "pip install" in command:
                for k, v in args.items():
                    command = command.replace("${" + k + "}", v).replace("$" + k, v)
                found.append({"command": command, **pip_install(shlex.split(command))})
    return found


def exec_form(rest: str) -> list[str]:
    return yaml.safe_load(rest)  # a JSON array


def parse_serve_args(argv: list[str]) -> dict:
    """Parse `tuneloop ...` argv with the real CLI (click), without running anything."""
    command = typer.main.get_command(app)
    parent = click.Context(command, info_name="tuneloop")
    sub = command.get_command(parent, argv[0])
    assert sub is not None, f"no `tuneloop {argv[0]}`"
    return sub.make_context(argv[0], list(argv[1:]), parent=parent).params


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_installs_like_the_readme_and_makefile(kind: str):
    make, readme = makefile_install(), readme_install()
    project = [p for p in pip_installs(DOCKERFILES[kind]) if p["target"] == "."]
    assert len(project) == 1, project
    [docker] = project
    assert docker["constraints"] == make["constraints"] == ["constraints.txt"]
    assert docker["extras"] == make["extras"] == readme["extras"] == {"all"}
    assert make["editable"] and not docker["editable"]  # an image installs the package, not a checkout
    assert (ROOT / "constraints.txt").is_file()


def test_the_quickstart_installs_only_the_extras_it_runs():
    """pyspark, playwright, moto, onnx and lm-eval are for `make test`: the quickstart must not wait for them."""
    quick = makefile_install("QUICKSTART_EXTRAS")
    assert quick["extras"] == {"train", "data", "serve"} and quick["constraints"] == ["constraints.txt"]
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^quickstart: \$\(VENV\)/\.installed-\$\(QUICKSTART_EXTRAS\)$", text, flags=re.M)
    assert re.search(r"^setup: \$\(VENV\)/\.installed-\$\(EXTRAS\)$", text, flags=re.M)


def test_cpu_image_takes_its_torch_version_from_constraints():
    """The CPU image installs torch from the CPU index first, at the version constraints.txt pins."""
    pins = [x for x in (ROOT / "constraints.txt").read_text().splitlines() if x.startswith("torch==")]
    assert len(pins) == 1
    [torch] = [p for p in pip_installs(DOCKERFILES["cpu"]) if "torch" in p["command"] and p["target"] is None]
    assert "download.pytorch.org/whl/cpu" in torch["command"]
    assert "grep -E '^torch==' constraints.txt" in torch["command"]


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_image_runs_the_server_as_non_root_with_a_volume_and_a_ready_healthcheck(kind: str):
    stage = final_stage(DOCKERFILES[kind])
    words = [w for w, _ in stage]
    users = [r for w, r in stage if w == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    [health] = [r for w, r in stage if w == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/ready" in health
    volumes = [v for w, r in stage if w == "VOLUME" for v in exec_form(r)]
    assert volumes == ["/data"]
    env = " ".join(r for w, r in stage if w == "ENV")
    assert re.search(r"\bTUNELOOP_HOME=/data\b", env)
    [entry] = [exec_form(r) for w, r in stage if w == "ENTRYPOINT"]
    [cmd] = [exec_form(r) for w, r in stage if w == "CMD"]
    assert entry == ["tuneloop"] and words.index("USER") < words.index("CMD")
    params = parse_serve_args(cmd)
    assert params["config"] == Path("/etc/tuneloop/serve.yaml")
    assert (params["host"], params["port"]) == ("0.0.0.0", 8000)
    copied = [r.split() for w, r in stage if w == "COPY" and not r.startswith("--from")]
    assert ["deploy/config/serve.yaml", "/etc/tuneloop/serve.yaml"] in copied


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_build_context_has_what_the_dockerfile_copies(kind: str):
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore").read_text().splitlines()
    allowed = [x[1:].rstrip("/") for x in ignore if x.startswith("!")]
    assert "*" in ignore  # an allowlist: .venv, .git, model stores never reach the daemon
    for word, rest in instructions(DOCKERFILES[kind]):
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is .dockerignored"


def test_container_serve_config_is_valid():
    cfg = load_config(ServeConfig, DEPLOY / "config" / "serve.yaml")
    assert cfg.host == "0.0.0.0" and cfg.port == 8000 and cfg.auth.enabled and cfg.models


def test_compose_wires_tuneloop_prometheus_grafana_and_mlflow():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"tuneloop", "prometheus", "grafana", "mlflow"}
    tl = services["tuneloop"]
    [cmd] = [exec_form(r) for w, r in final_stage(DOCKERFILES["cpu"]) if w == "CMD"]
    assert tl["command"] == cmd
    assert "tuneloop-home:/data" in tl["volumes"]
    assert tl["build"]["dockerfile"].startswith("deploy/docker/${TUNELOOP_DOCKERFILE:-Dockerfile.cpu}")
    assert (DEPLOY / tl["build"]["context"]).resolve() == ROOT
    # every bind mount exists in the repository
    for name, service in services.items():
        for volume in service.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
    # Prometheus scrapes the tuneloop service on its port and loads the rule files
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["tuneloop:8000"] and job["metrics_path"] == "/metrics"
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]
    assert prom["rule_files"] == ["rules/*.yaml"]
    # Grafana: the datasource uid the dashboard's variable picks, the provider path = the mount
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert (
        ds["datasources"][0]["url"] == "http://prometheus:9090"
        and ds["datasources"][0]["type"] == "prometheus"
    )
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tuneloop.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]
    # MLflow: the same image and volume; the store is TUNELOOP_HOME's mlflow.db and artifacts/
    ml = services["mlflow"]
    assert ml["image"] == tl["image"] and ml["entrypoint"] == ["mlflow"]
    assert "sqlite:////data/mlflow.db" in ml["command"] and "file:///data/artifacts" in ml["command"]
    assert "tuneloop-home:/data" in ml["volumes"]


def test_mlflow_paths_match_tuneloop_home(monkeypatch):
    from tuneloop import paths

    monkeypatch.setenv("TUNELOOP_HOME", "/data")
    assert paths.mlflow_tracking_uri() == "sqlite:////data/mlflow.db"
    assert paths.artifacts_dir(create=False) == Path("/data/artifacts")
