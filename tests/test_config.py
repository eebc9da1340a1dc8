"""Typed configs: YAML + key=value overrides, and errors that name the file, line, key and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from tuneloop.config import Config, load_config, parse_override
from tuneloop.errors import ConfigError


class Lora(Config):
    rank: int = Field(8, gt=0)
    alpha: float = 16.0
    targets: list[str] = ["q_proj", "v_proj"]


class Train(Config):
    model: str = "smollm2-135m-instruct"
    learning_rate: float = 2e-4
    epochs: int = 1
    lora: Lora = Lora()
    output: str | None = None
    tags: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_defaults_when_no_file():
    cfg = load_config(Train)
    assert cfg.lora.rank == 8 and cfg.model == "smollm2-135m-instruct"


def test_yaml_values_and_nested_overrides(tmp_path):
    path = write(tmp_path, "learning_rate: 1.0e-4\nlora:\n  rank: 4\n")
    cfg = load_config(
        Train, path, ["lora.rank=16", "epochs=3", "lora.targets=[q_proj,k_proj]", "tags.team=search"]
    )
    assert cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.lora.rank == 16 and cfg.epochs == 3
    assert cfg.lora.targets == ["q_proj", "k_proj"]
    assert cfg.tags == {"team": "search"}


def test_override_keeps_strings_for_str_fields():
    # "yes" would be a bool and "1e-4" a string in YAML; a str field must get the text as typed
    cfg = load_config(Train, None, ["model=yes", "output=0123", "learning_rate=1e-4"])
    assert cfg.model == "yes" and cfg.output == "0123"
    assert cfg.learning_rate == pytest.approx(1e-4)


def test_null_override_clears_an_optional_string_but_not_a_required_one(tmp_path):
    path = write(tmp_path, "output: runs/x\n")
    assert load_config(Train, path, ["output=null"]).output is None
    assert load_config(Train, path, ["output=~"]).output is None
    assert load_config(Train, path, ["model=null"]).model == "null"  # a required str keeps the text


def test_typo_in_file_names_file_line_and_close_match(tmp_path):
    path = write(tmp_path, "model: x\nlora:\n  rnak: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(Train, path)
    msg = str(e.value)
    assert f"{path}:3" in msg
    assert "unknown key 'lora.rnak'" in msg
    assert "did you mean 'lora.rank'" in msg


def test_typo_in_override_names_the_override_and_close_match():
    with pytest.raises(ConfigError) as e:
        load_config(Train, None, ["lerning_rate=0.1"])
    assert "override 'lerning_rate=0.1'" in str(e.value)
    assert "did you mean 'learning_rate'" in str(e.value)


def test_wrong_type_names_key_line_and_value(tmp_path):
    path = write(tmp_path, "epochs: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(Train, path)
    assert f"{path}:1" in str(e.value) and "epochs" in str(e.value) and "'many'" in str(e.value)


def test_constraint_violation_from_command_line():
    with pytest.raises(ConfigError) as e:
        load_config(Train, None, ["lora.rank=0"])
    assert "command line" in str(e.value) and "lora.rank" in str(e.value)


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "model: x\nlora: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(Train, path)
    assert str(path) in str(e.value) and "invalid YAML" in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Train, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Train, write(tmp_path, "- a\n- b\n"))


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lora.rank")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("lora..rank=3")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(Train, {"lora": 5}, ["lora.rank=3"])


def test_to_yaml_roundtrip(tmp_path):
    cfg = load_config(Train, None, ["lora.rank=32"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(Train, path) == cfg


def test_missing_section_names_the_keys_it_needs():
    class Data(Config):
        path: str

    class WithData(Config):
        data: Data

    with pytest.raises(ConfigError) as e:
        load_config(WithData)
    assert "missing required key 'data' (needs data.path)" in e.value.message
    assert "key=value" in e.value.hint
