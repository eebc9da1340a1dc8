"""`Registry`: register runs and folders as MLflow model versions, fetch them verified, move aliases.

Each version is one MLflow run in the `tuneloop-registry` experiment whose artifacts are
`model/` (the HF or adapter folder), `run/` (config.yaml, metrics.json, run.json, eval, loss.png)
and `tuneloop-manifest.json`; the model version's source is that run's `model/` folder, so MLflow's
own `models:/NAME/1` download gives the plain HF folder.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from tuneloop.errors import TuneloopError
from tuneloop.models.resolve import resolve_model
from tuneloop.registry import aliases, backend, cache, lineage, lookup
from tuneloop.registry.adapters import base_of, pin_adapter
from tuneloop.registry.manifest import write_manifest
from tuneloop.registry.refs import Ref, check_alias, check_name, is_registry_ref, parse_ref


@dataclass
class ModelVersionInfo:
    name: str
    version: int
    path: Path  # local folder: an HF model folder, or an adapter folder whose base is a registry ref
    tags: dict[str, str]
    aliases: list[str]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def is_adapter(self) -> bool:
        return self.tags.get("tuneloop.kind") == "adapter"


class Registry:
    """The model registry on an MLflow tracking server (SQLite in TUNELOOP_HOME by default)."""

    def __init__(self, tracking_uri: str | None = None, *, artifact_location: str | None = None):
        self.tracking_uri = backend.tracking_uri(tracking_uri)
        self.client = backend.client(self.tracking_uri)
        self._artifact_location = artifact_location
        self._key = backend.cache_key(self.tracking_uri)

    # ------------------------------------------------------------------ register

    @backend.user_errors
    def register_run(
        self, run_dir: str | Path, name: str, description: str = "", *, base_name: str | None = None
    ) -> ModelVersionInfo:
        """A training run as a new version; an adapter run also registers (or reuses) its base."""
        run = lineage.read_run(run_dir)
        check_name(name)
        base_path = _base_folder(run)
        base_sha = lineage.weights_sha256(base_path) if base_path else None
        tags = lineage.run_tags(run, base_sha)
        stage = cache.staging()
        try:
            shutil.copytree(run.model_dir, stage / "model")
            (stage / "run").mkdir()
            for file in lineage.RUN_FILES:
                if (run.path / file).is_file():
                    shutil.copy2(run.path / file, stage / "run" / file)
            if run.is_adapter:
                if base_path is None:
                    raise _base_gone(run)
                reference = str(run.run["base_model"].get("reference", base_path))
                base = self._pin_base(base_path, base_sha or "", reference, base_name)
                tags["tuneloop.base"] = pin_adapter(stage / "model", base)
            link = self._train_link(run.run.get("mlflow_run_id"))
            return self._create(name, stage, tags, description, link)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    @backend.user_errors
    def register_folder(
        self,
        folder: str | Path,
        name: str,
        *,
        tags: dict[str, str] | None = None,
        parent: str | None = None,
        description: str = "",
    ) -> ModelVersionInfo:
        """Any HF model folder or adapter folder; `parent` is the "NAME/VERSION" it was derived from."""
        path = _model_folder(folder)
        check_name(name)
        all_tags: dict[str, str] = {"tuneloop.source": str(path)}
        if parent:
            p = lookup.model_version(self.client, parse_ref(parent))
            all_tags.update(lineage.inherited(dict(p.tags)))
            all_tags["tuneloop.parent"] = f"{p.name}/{p.version}"
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        stage = cache.staging()
        try:
            shutil.copytree(path, stage / "model", ignore=shutil.ignore_patterns(".partial-*", "*.lock"))
            if lineage.is_adapter_folder(path):
                all_tags["tuneloop.base"] = pin_adapter(stage / "model", self._adapter_base(path))
            return self._create(name, stage, all_tags, description, None)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _create(
        self, name: str, stage: Path, tags: dict[str, str], description: str, link: str | None
    ) -> ModelVersionInfo:
        kind = "adapter" if lineage.is_adapter_folder(stage / "model") else "model"
        manifest_sha = write_manifest(stage)
        tags.update(
            lineage.common_tags(kind, lineage.weights_sha256(stage / "model", strict=False), manifest_sha)
        )
        if link:
            tags["tuneloop.mlflow_run"] = link
        with backend.mlflow_errors(f"registering '{name}' at {self.tracking_uri}"):
            exp = backend.experiment_id(self.client, self.tracking_uri, self._artifact_location)
            run = self.client.create_run(exp, run_name=name, tags={"tuneloop.registered_model": name})
            try:
                self.client.log_artifacts(run.info.run_id, str(stage))
                self._ensure_model(name, description)
                mv = self.client.create_model_version(
                    name,
                    f"{run.info.artifact_uri}/model",
                    run_id=run.info.run_id,
                    tags=tags,
                    run_link=link,
                    description=description or None,
                )
            except BaseException:
                self.client.set_terminated(run.info.run_id, "FAILED")
                raise
            self.client.set_terminated(run.info.run_id)
        version = int(mv.version)
        target = cache.adopt(stage, cache.folder(self._key, name, version))  # no download of what we have
        return ModelVersionInfo(name, version, target / "model", tags, [])

    def _ensure_model(self, name: str, description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description or None)

    def _pin_base(self, base_path: Path, sha: str, reference: str, base_name: str | None) -> str:
        """The registry reference of the base: an existing version with the same weights, else a new one."""
        # two adapters on a new base registered at once must not both add it (a remote server has no lock)
        with FileLock(str(cache.root() / f".{self._key}-base-{sha[:16]}.lock"), timeout=3600):
            return self._find_or_add_base(base_path, sha, reference, base_name)

    def _find_or_add_base(self, base_path: Path, sha: str, reference: str, base_name: str | None) -> str:
        same = [
            v
            for v in lookup.by_tag(self.client, "tuneloop.weights_sha256", sha)
            if v.tags.get("tuneloop.kind") == "model"
        ]
        if same:
            first = min(same, key=lambda v: (v.name != base_name, int(v.version)))
            return f"{first.name}/{first.version}"
        name = base_name or _default_base_name(reference)
        info = self.register_folder(
            base_path,
            name,
            tags={"tuneloop.base_model.reference": reference},
            description=f"base model ({reference}), registered for the adapters trained on it",
        )
        return info.ref

    def _adapter_base(self, adapter: Path) -> str:
        ref = base_of(adapter)
        if parse_ok := _registry_ref(ref):
            v = lookup.model_version(self.client, parse_ok)
            return f"{v.name}/{v.version}"
        base = resolve_model(ref).path
        return self._pin_base(base, lineage.weights_sha256(base), ref, None)

    def _train_link(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        try:
            exp = self.client.get_run(run_id).info.experiment_id
        except Exception:  # trained against another tracking server: the id is still recorded
            exp = None
        return backend.run_link(self.tracking_uri, exp, run_id)

    # ------------------------------------------------------------------ read

    @backend.user_errors
    def get(self, ref: str) -> ModelVersionInfo:
        """A verified local copy of "NAME@alias", "NAME/VERSION" or "NAME" (its latest version)."""
        mv = lookup.model_version(self.client, parse_ref(ref))
        tags = dict(mv.tags)
        if "tuneloop.manifest_sha256" not in tags:
            raise TuneloopError(
                f"{mv.name}/{mv.version} was not registered by tuneloop (no checksum manifest)",
                hint="register it with `tuneloop registry register` so it can be verified on load",
            )
        target = cache.fetch(
            cache.folder(self._key, mv.name, int(mv.version)),
            tags["tuneloop.manifest_sha256"],
            f"{mv.name}/{mv.version}",
            lambda dst: self._download(mv.run_id, dst),
        )
        return ModelVersionInfo(mv.name, int(mv.version), target / "model", tags, list(mv.aliases or []))

    def _download(self, run_id: str, dst: Path) -> None:
        self.client.download_artifacts(run_id, "", str(dst))

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """One small stored file (a manifest, a config) without downloading the model."""
        stage = cache.staging()
        try:
            local = self.client.download_artifacts(run_id, path, str(stage))
            return Path(local).read_text()
        except Exception:  # absent for this version (a folder registered without a run)
            return None
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    @backend.user_errors
    def version(self, ref: str) -> Any:
        """The MLflow ModelVersion a reference names, without downloading anything."""
        return lookup.model_version(self.client, parse_ref(ref))

    @backend.user_errors
    def model(self, name: str) -> Any:
        return lookup.registered_model(self.client, name)

    @backend.user_errors
    def versions(self, name: str) -> list[Any]:
        self.model(name)
        return lookup.versions(self.client, name)

    @backend.user_errors
    def names(self) -> list[str]:
        return lookup.model_names(self.client)

    # ------------------------------------------------------------------ aliases

    @backend.user_errors
    def promote(self, name: str, version: int, alias: str) -> None:
        """Point `alias` at `version` (the version must exist); recorded in the alias history."""
        check_alias(alias)
        mv = self.version(f"{name}/{int(version)}")
        current = self._aliased(name, alias)
        if current == int(mv.version):
            return
        self.client.set_registered_model_alias(name, alias, str(mv.version))
        self._record(name, aliases.entry(alias, int(mv.version), "promote", current))

    @backend.user_errors
    def rollback(self, name: str, alias: str = "production") -> int:
        """Point `alias` back at the version it pointed at before; returns that version."""
        check_alias(alias)
        current = self._aliased(name, alias)
        existing = {int(v.version) for v in self.versions(name)}
        target = aliases.rollback_target(self.history(name), alias, current, existing)
        self.client.set_registered_model_alias(name, alias, str(target))
        self._record(name, aliases.entry(alias, target, "rollback", current))
        return target

    @backend.user_errors
    def unalias(self, name: str, alias: str) -> None:
        current = self._aliased(name, alias)
        if current is None:
            raise lookup.missing_error(self.client, Ref(name, alias=alias), self.model(name))
        self.client.delete_registered_model_alias(name, alias)
        self._record(name, aliases.entry(alias, None, "unalias", current))

    @backend.user_errors
    def history(self, name: str) -> list[dict]:
        """Every alias change of `name`, oldest first: {alias, version, previous, action, time, user}."""
        return aliases.load(dict(self.model(name).tags))

    def _aliased(self, name: str, alias: str) -> int | None:
        found = dict(self.model(name).aliases or {}).get(alias)
        return int(found) if found is not None else None

    def _record(self, name: str, item: dict[str, Any]) -> None:
        # read-modify-write of one tag: serialize writers on this machine (a remote server has no lock)
        with FileLock(str(cache.root() / f".{self._key}-{name}.history.lock"), timeout=60):
            entries = self.history(name)
            self.client.set_registered_model_tag(name, aliases.HISTORY_TAG, aliases.dump([*entries, item]))

    # ------------------------------------------------------------------ delete

    @backend.user_errors
    def delete(self, name: str, version: int) -> None:
        """Delete a version; refused while an alias points at it or an adapter is pinned to it."""
        mv = self.version(f"{name}/{int(version)}")
        if mv.aliases:
            alias = sorted(mv.aliases)[0]
            raise TuneloopError(
                f"{name}/{version} is in use: alias '{alias}' points at it",
                hint=f"move the alias first (`tuneloop registry promote {name} OTHER --alias {alias}` or "
                f"`tuneloop registry rollback {name} --alias {alias}`) or drop it (`tuneloop registry unalias`)",
            )
        users = lookup.by_tag(self.client, "tuneloop.base", f"{name}/{mv.version}")
        if users:
            refs = ", ".join(sorted(f"{u.name}/{u.version}" for u in users))
            raise TuneloopError(
                f"{name}/{version} is the base model of adapter version(s) {refs}",
                hint="delete those adapter versions first; an adapter cannot load without its base",
            )
        with backend.mlflow_errors(f"deleting {name}/{version}"):
            self.client.delete_model_version(name, str(mv.version))
            if self.client.get_run(mv.run_id).data.tags.get("tuneloop.registered_model") == name:
                self.client.delete_run(mv.run_id)  # the run existed only to hold this version's files
        cache.remove(cache.folder(self._key, name, int(mv.version)))


def _registry_ref(ref: str) -> Ref | None:
    return parse_ref(ref) if is_registry_ref(ref) else None


def _model_folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise TuneloopError(f"model folder '{folder}' does not exist", hint="check the path")
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise TuneloopError(
            f"'{folder}' is not a model folder (no config.json or adapter_config.json)",
            hint="point at the folder written by save_pretrained",
        )
    return path.resolve()


def _base_folder(run: lineage.RunFolder) -> Path | None:
    """The run's base model folder: where it was trained from, else its reference resolved again."""
    base = run.run["base_model"]
    if base.get("path") and (Path(base["path"]) / "config.json").is_file():
        return Path(base["path"])
    try:
        return resolve_model(str(base.get("reference", "")), pull=False).path
    except TuneloopError:
        return None


def _base_gone(run: lineage.RunFolder) -> TuneloopError:
    base = run.run["base_model"]
    return TuneloopError(
        f"{run.path / 'run.json'}: base model '{base.get('reference')}' is no longer at {base.get('path')}",
        hint="an adapter is registered together with its base; restore or pull the base model, then retry",
    )


def _default_base_name(reference: str) -> str:
    tail = reference.rstrip("/").split("/")[-1].split("@")[0]
    return re.sub(r"[^\w.-]", "-", tail).lstrip(".-_") or "base"
