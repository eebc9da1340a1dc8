"""Typed configs: YAML files validated by pydantic, with `key=value` overrides from the command line.

Every config in tuneloop is a `Config` subclass. `load_config(Cls, "train.yaml", ["lora.rank=16"])`
reads the file, applies the overrides (nested keys with dots), validates, and on failure raises a
`ConfigError` that names the file, the line, the key and — for a typo — the closest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tuneloop.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base for every YAML config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- public entry points


def load_config(
    cls: type[C],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> C:
    """Build `cls` from a YAML file (or a mapping, or nothing) plus `key=value` overrides.

    `edit` changes the data read before the overrides apply (a command's flags, such as `serve
    --model`, that add to the file), so `key=value` can reach what it added (`models.0.engine...`)."""
    where = str(source) if isinstance(source, (str, Path)) else "<config>"
    lines: dict[tuple[str, ...], int] = {}
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data, lines = _read_yaml(Path(source))
    if edit is not None:
        edit(data)
    for item in overrides:
        key, value = parse_override(item)
        _check_key(cls, key, where=f"override '{item}'")
        _set_path(data, key, _coerce_override(cls, key, value), where=f"override '{item}'")
        lines[key] = 0  # 0 marks "came from the command line"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(cls, e, where, lines), hint=_hint(e)) from None


def parse_override(item: str) -> tuple[tuple[str, ...], str]:
    """Split `a.b.c=value` into (("a","b","c"), "value")."""
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' is not of the form key=value",
            hint="nested keys use dots, e.g. lora.rank=16 or data.path=./data",
        )
    key, value = item.split("=", 1)
    parts = tuple(p.strip() for p in key.strip().split("."))
    if not all(parts):
        raise ConfigError(f"override '{item}' has an empty key part", hint="write e.g. lora.rank=16")
    return parts, value


# ---------------------------------------------------------------- YAML with line numbers


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' does not exist", hint="check the path, or omit it to use defaults"
        )
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(
            f"{path}{at}: invalid YAML: {problem}", hint="check indentation and quoting"
        ) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            out[key] = item.start_mark.line + 1
            _collect_lines(item, key, out)


# ---------------------------------------------------------------- walking the schema


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / Annotated so we can see the model class (or container) underneath."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _model_at(cls: Any, loc: Sequence[Any]) -> Any:
    """The annotation reached by following `loc` from `cls` (None where it can't be followed)."""
    current = cls
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin in (list, tuple, Sequence, dict, Mapping) or origin is typing.get_origin(dict[str, int]):
            args = typing.get_args(current)
            current = args[-1] if args else None
        else:
            return None
    return _unwrap(current)


def _optional_at(cls: Any, key: Sequence[str]) -> bool:
    """Whether the field at `key` accepts None (`str | None`)."""
    parent = _model_at(cls, key[:-1]) if len(key) > 1 else cls
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        field = parent.model_fields.get(str(key[-1]))
        return field is not None and type(None) in typing.get_args(field.annotation)
    return False


def _fields(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple, Sequence)


def _check_key(cls: type[Config], key: tuple[str, ...], where: str) -> None:
    """Refuse an override whose key does not exist, naming the closest valid key."""
    for depth in range(len(key)):
        parent = _model_at(cls, key[:depth])
        if _is_list(parent):  # a list of sections: the next part is an index (models.0.engine...)
            if not key[depth].isdigit():
                dotted = ".".join(key[:depth])
                raise ConfigError(
                    f"{where}: '{dotted}' is a list; the key after it is an entry's index, not '{key[depth]}'",
                    hint=f"e.g. {dotted}.0.{key[depth]}=...",
                )
            continue
        names = _fields(parent)
        if not names:
            return  # a free-form mapping (dict field): any key is allowed
        if key[depth] not in names:
            dotted = ".".join(key[: depth + 1])
            raise ConfigError(
                f"{where}: unknown key '{dotted}'" + _did_you_mean(key[depth], names, key[:depth]),
                hint=f"valid keys here: {', '.join(names)}",
            )


def _coerce_override(cls: type[Config], key: tuple[str, ...], raw: str) -> Any:
    """Parse an override value as YAML (numbers, bools, lists), but keep strings for str fields."""
    target = _model_at(cls, key)
    if target is str:
        # `key=null` on an optional string field means None (the YAML spelling), not the text "null"
        return None if raw.strip() in ("null", "Null", "NULL", "~") and _optional_at(cls, key) else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    return value


def _set_path(data: dict[str, Any], key: tuple[str, ...], value: Any, where: str) -> None:
    node: Any = data
    for depth, part in enumerate(key[:-1]):
        if isinstance(node, list):
            node = _list_entry(node, part, key[:depth], where)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"{where}: '{part}' is a value, not a section, so it has no sub-keys")
        node = child
    if isinstance(node, list):
        index = _index(node, key[-1], key[:-1], where)
        node[index] = value
    else:
        node[key[-1]] = value


def _index(items: list[Any], part: str, at: tuple[str, ...], where: str) -> int:
    dotted = ".".join(at)
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(
            f"{where}: '{dotted}' has {len(items)} entries; there is no '{dotted}.{part}'",
            hint=f"indexes start at 0; add entries in the config file, then override {dotted}.N.KEY",
        )
    return int(part)


def _list_entry(items: list[Any], part: str, at: tuple[str, ...], where: str) -> dict[str, Any]:
    entry = items[_index(items, part, at, where)]
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: '{'.'.join((*at, part))}' is a value, not a section, so it has no sub-keys"
        )
    return entry


def _did_you_mean(word: str, choices: Sequence[str], prefix: tuple[str, ...] = ()) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{'.'.join((*prefix, close[0]))}'?)"


# ---------------------------------------------------------------- turning pydantic errors into ours


def _loc_str(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(
    cls: type[Config], error: ValidationError, where: str, lines: dict[tuple[str, ...], int]
) -> str:
    messages = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _loc_str(loc) or "(top level)"
        line = lines.get(tuple(str(p) for p in loc))
        place = f"{where}:{line}" if line else ("command line" if line == 0 else where)
        if err["type"] == "extra_forbidden":
            names = _fields(_model_at(cls, loc[:-1]))
            prefix = tuple(str(p) for p in loc[:-1])
            msg = f"unknown key '{key}'" + _did_you_mean(str(loc[-1]), names, prefix)
        elif err["type"] == "missing":
            msg = f"missing required key '{key}'" + _required_inside(cls, loc)
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            msg = f"key '{key}': {err['msg']}{shown}"
        messages.append(f"{place}: {msg}")
    return "invalid config:\n  " + "\n  ".join(messages) if len(messages) > 1 else messages[0]


def _required_inside(cls: type[Config], loc: Sequence[Any]) -> str:
    """For a missing section, the keys it needs: "(needs data.path)"."""
    section = _model_at(cls, loc)
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return ""
    needed = [f"{_loc_str(loc)}.{n}" for n, f in section.model_fields.items() if f.is_required()]
    return f" (needs {', '.join(needed)})" if needed else ""


def _hint(error: ValidationError) -> str | None:
    kinds = {e["type"] for e in error.errors()}
    if "extra_forbidden" in kinds:
        return "remove the key or fix its spelling; `--help` lists the options"
    if "missing" in kinds:
        return "set it in the YAML file or on the command line as key=value (e.g. data.path=./my-dataset)"
    return None
