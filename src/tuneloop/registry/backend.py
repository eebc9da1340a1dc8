"""The MLflow connection: which tracking server, which experiment holds registry artifacts, errors.

Default: SQLite in TUNELOOP_HOME with artifacts under TUNELOOP_HOME/artifacts/registry. A remote
server (`--tracking-uri http://...` or MLFLOW_TRACKING_URI) keeps its own artifact root, which may
be an object store; TUNELOOP_ARTIFACT_LOCATION picks one for a database URI without a server.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tuneloop import paths
from tuneloop.errors import TuneloopError, missing_extra

F = TypeVar("F", bound=Callable[..., Any])
EXPERIMENT = "tuneloop-registry"
ENV_ARTIFACTS = "TUNELOOP_ARTIFACT_LOCATION"


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_tracking_uri()


def client(uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise missing_extra("mlflow", "train") from None
    # progress bars and "View run at" lines would land in `--json` output; the run link is a tag instead
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's default retries make an unreachable server hang for ~4 minutes before saying so
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    for name in ("mlflow", "alembic"):  # schema migrations and "Created version" chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def experiment_id(mlflow_client: Any, uri: str, artifact_location: str | None = None) -> str:
    """The experiment that holds one run per registered version (created on first use)."""
    found = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = artifact_location or os.environ.get(ENV_ARTIFACTS)
    if location is None and not is_server(uri):  # without this MLflow writes ./mlruns in the cwd
        location = (paths.artifacts_dir() / "registry").as_uri()
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=location)


def cache_key(uri: str) -> str:
    """Two tracking servers may both hold an `acme/1`; their downloads must not share a folder."""
    return hashlib.sha256(uri.encode()).hexdigest()[:12]


def run_link(uri: str, experiment: str | None, run_id: str | None) -> str | None:
    """A clickable link when the tracking server has a UI, else the `runs:/` URI."""
    if not run_id:
        return None
    if uri.startswith(("http://", "https://")) and experiment:
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"runs:/{run_id}"


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's failures (server down, bad URI, permissions) as a user error that says what failed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        raise TuneloopError(
            f"{what}: {e.message.splitlines()[0][:300]}",
            hint="check --tracking-uri / MLFLOW_TRACKING_URI and that the server is reachable",
        ) from None


def user_errors(method: F) -> F:
    """Decorate a `Registry` method so that any MLflow failure inside it reaches the user as one line."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with mlflow_errors(f"registry {method.__name__.replace('_', ' ')} at {self.tracking_uri}"):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
