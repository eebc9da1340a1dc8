"""`judge:` settings: a wrong one fails at load time, naming the key (and the file and line)."""

from __future__ import annotations

import pytest

from tuneloop.config import Config, load_config
from tuneloop.errors import ConfigError
from tuneloop.evaluation.judge_config import DEFAULT_RUBRIC, JudgeConfig


class GateLike(Config):
    """A config that embeds the judge as a section, as eval, gate and curate configs do."""

    judge: JudgeConfig | None = None


def test_a_model_reference_or_an_upstream_is_a_judge():
    local = load_config(JudgeConfig, {"model": "smollm2-135m-instruct"})
    assert local.rubric == DEFAULT_RUBRIC and local.max_tokens == 256 and local.temperature == 0
    up = load_config(
        JudgeConfig,
        {"base_url": "http://127.0.0.1:8000/v1", "model_name": "judge", "api_key_env": "JUDGE_KEY"},
    )
    assert up.model is None and up.model_name == "judge"


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({}, "(top level)", "no judge"),
        ({"model": "m", "base_url": "http://x/v1", "model_name": "n"}, "(top level)", "not both"),
        ({"base_url": "http://x/v1"}, "model_name", "needs model_name"),
        ({"model": "m", "model_name": "n"}, "model_name", "set base_url too"),
        ({"model": "m", "api_key_env": "K"}, "api_key_env", "upstream judge"),
        ({"base_url": "x.com/v1", "model_name": "n"}, "base_url", "http://"),
        ({"model": "m", "rubric": "   "}, "rubric", "blank"),
        ({"model": "m", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": "m", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"model": "m", "concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({"model": "m", "rubirc": "x"}, "rubirc", "did you mean 'rubric'"),
    ],
)
def test_bad_settings_name_the_key(data, key, says):
    with pytest.raises(ConfigError) as e:
        load_config(JudgeConfig, data)
    assert f"'{key}'" in str(e.value) if key != "(top level)" else "(top level)" in str(e.value)
    assert says in str(e.value)


def test_an_embedded_judge_section_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("judge:\n  base_url: http://127.0.0.1:9/v1\n  model_nam: judge\n")
    with pytest.raises(ConfigError) as e:
        load_config(GateLike, path)
    text = str(e.value)
    assert f"{path}:3" in text and "judge.model_nam" in text and "did you mean 'judge.model_name'" in text
    path.write_text("judge:\n  base_url: http://127.0.0.1:9/v1\n")
    with pytest.raises(ConfigError, match=r"judge\.model_name.*needs model_name"):
        load_config(GateLike, path)


def test_an_override_reaches_the_judge_section():
    cfg = load_config(GateLike, {"judge": {"model": "m"}}, ["judge.max_tokens=32", "judge.reasons=false"])
    assert cfg.judge is not None and cfg.judge.max_tokens == 32 and cfg.judge.reasons is False
    with pytest.raises(ConfigError, match=r"judge\.rubirc"):
        load_config(GateLike, {"judge": {"model": "m"}}, ["judge.rubirc=x"])
