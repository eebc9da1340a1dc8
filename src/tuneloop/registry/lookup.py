"""Finding registered models and versions, with errors that list what exists and the closest match."""

from __future__ import annotations

import difflib
from typing import Any

from tuneloop.errors import ModelNotFoundError
from tuneloop.registry.refs import Ref


def _mlflow_missing(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def paged(call: Any, **kwargs: Any) -> list[Any]:
    """Every page of an MLflow search (they return at most max_results per call)."""
    items, token = [], None
    while True:
        page = call(page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


def model_names(client: Any) -> list[str]:
    return sorted(m.name for m in paged(client.search_registered_models, max_results=1000))


def versions(client: Any, name: str) -> list[Any]:
    """Every version of `name`, oldest first."""
    found = paged(client.search_model_versions, filter_string=f"name = '{_quote(name)}'", max_results=1000)
    return sorted(found, key=lambda v: int(v.version))


def registered_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if not _mlflow_missing(e):
            raise
    names = model_names(client)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    msg = f"no registered model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    hint = (
        f"registered models: {', '.join(names)}"
        if names
        else "the registry is empty; add a run with `tuneloop registry register RUN_DIR --name NAME`"
    )
    raise ModelNotFoundError(msg, hint=hint)


def model_version(client: Any, ref: Ref) -> Any:
    """The MLflow ModelVersion a reference names (alias, number, or the latest)."""
    from mlflow.exceptions import MlflowException

    model = registered_model(client, ref.name)
    if ref.alias and ref.alias not in dict(model.aliases or {}):  # MLflow says INVALID_PARAMETER_VALUE
        raise missing_error(client, ref, model)
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version is not None:
            return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as e:
        if not _mlflow_missing(e):
            raise
        raise missing_error(client, ref, model) from None
    all_versions = versions(client, ref.name)
    if not all_versions:
        raise ModelNotFoundError(f"registered model '{ref.name}' has no versions", hint=_REGISTER)
    return all_versions[-1]


def missing_error(client: Any, ref: Ref, model: Any) -> ModelNotFoundError:
    if ref.alias:
        aliases = dict(model.aliases or {})
        close = difflib.get_close_matches(ref.alias, list(aliases), n=1, cutoff=0.5)
        msg = f"'{ref.name}' has no alias '{ref.alias}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        listed = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items()))
        hint = (
            f"aliases: {listed}"
            if aliases
            else f"no aliases yet: `tuneloop registry promote {ref.name} VERSION --alias production`"
        )
        return ModelNotFoundError(msg, hint=hint)
    numbers = [str(v.version) for v in versions(client, ref.name)]
    return ModelNotFoundError(
        f"'{ref.name}' has no version {ref.version}",
        hint=f"versions: {', '.join(numbers)}" if numbers else _REGISTER,
    )


def by_tag(client: Any, key: str, value: str) -> list[Any]:
    """Versions of any model whose tag `key` equals `value` (dedup of bases, adapters pinned to a base)."""
    return paged(
        client.search_model_versions,
        filter_string=f"tags.`{key}` = '{_quote(value)}'",
        max_results=1000,
    )


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


_REGISTER = "register one with `tuneloop registry register RUN_DIR --name NAME`"
