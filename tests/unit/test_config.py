"""Config precedence and validation: CLI > env > YAML > config.py > defaults; unknown keys named."""
from __future__ import annotations

import pytest

from mpdistill.config import RunConfig, build_config, sibling
from mpdistill.errors import ConfigError


def _config_py(tmp_path, text):
    path = tmp_path / "config.py"
    path.write_text(text)
    return path


def test_defaults_without_any_source(tmp_path):
    """With no sources the built-in defaults apply (64 processes, interval 10)."""
    cfg = build_config({}, env={}, config_py=tmp_path / "missing.py")
    assert cfg.processes == 64 and cfg.checkpoint_interval == 10 and cfg.concurrency == 1


def test_precedence_cli_env_yaml_config_py(tmp_path):
    """Each layer overrides the ones below it, field by field."""
    config_py = _config_py(tmp_path, "PROCESSES = 8\nMODEL = 'from-config-py'\nTIMEOUT = 5\nMAX_RETRIES = 2\n")
    env = {"MPDISTILL_MODEL": "from-env", "MPDISTILL_PROCESSES": "16"}
    yaml_values = {"processes": 12, "timeout": 7, "model": "from-yaml"}
    cfg = build_config({"processes": 32}, env=env, yaml_values=yaml_values, config_py=config_py)
    assert cfg.processes == 32          # CLI
    assert cfg.model == "from-env"      # env over YAML and config.py
    assert cfg.timeout == 7.0           # YAML over config.py
    assert cfg.max_retries == 2         # config.py over default


def test_unknown_name_in_config_py_is_named(tmp_path):
    """A misspelled config.py constant is an error naming the file and the name."""
    config_py = _config_py(tmp_path, "PROCESESS = 8\n")
    with pytest.raises(ConfigError, match="PROCESESS") as err:
        build_config({}, env={}, config_py=config_py)
    assert str(config_py) in str(err.value)


def test_wrong_types_and_values_are_errors(tmp_path):
    """Wrong types in any layer and impossible values are ConfigErrors naming the setting."""
    with pytest.raises(ConfigError, match="PROCESSES"):
        build_config({}, env={}, config_py=_config_py(tmp_path, "PROCESSES = 'many'\n"))
    with pytest.raises(ConfigError, match="unknown setting 'procs'"):
        build_config({}, env={}, yaml_values={"procs": 3}, config_py=tmp_path / "none.py")
    with pytest.raises(ConfigError, match="MPDISTILL_PROCESSES"):
        build_config({}, env={"MPDISTILL_PROCESSES": "x"}, config_py=tmp_path / "none.py")
    with pytest.raises(ConfigError, match="processes must be > 0"):
        build_config({"processes": 0}, env={}, config_py=tmp_path / "none.py")


def test_keys_come_from_env_and_never_show_in_repr(tmp_path):
    """OPENAI_API_KEY and OPENAI_BASE_URL are read; the key is not in the config's repr."""
    cfg = build_config({}, env={"OPENAI_API_KEY": "sk-test-secret-0001", "OPENAI_BASE_URL": "http://x/v1"},
                       config_py=tmp_path / "none.py")
    assert cfg.api_key == "sk-test-secret-0001" and cfg.base_url == "http://x/v1"
    assert "sk-test-secret-0001" not in repr(cfg)


def test_output_paths_follow_the_model():
    """{model} in the output path is replaced; errors and summary files sit beside it."""
    cfg = RunConfig(model="deepseek-ai/DeepSeek-R1")
    assert cfg.output_path.name == "deepseek-ai_DeepSeek-R1_results.jsonl"
    assert cfg.errors_path.name == "deepseek-ai_DeepSeek-R1_results.errors.jsonl"
    assert sibling(cfg.output_path, ".summary.json").name.endswith("_results.summary.json")
