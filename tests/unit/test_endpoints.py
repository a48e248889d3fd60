"""Endpoint loading: the YAML endpoints file, the OPENAI_API_KEYS shorthand and --pool selection."""
from __future__ import annotations

import textwrap

import pytest

from mpdistill.provider.endpoint import Endpoint
from mpdistill.provider.registry import endpoints_from_env, load_endpoints, select_pool
from mpdistill.errors import ConfigError

KEY = "sk-test-0001-yaml"


def write(tmp_path, text: str):
    path = tmp_path / "endpoints.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_good_file_as_mapping(tmp_path, monkeypatch):
    """A mapping with `endpoints:` yields Endpoint records with every field typed and defaulted."""
    monkeypatch.setenv("MPD_TEST_KEY", "sk-test-0002-env")
    path = write(tmp_path, f"""
        endpoints:
          - name: api_1
            base_url: https://api.example.test/v1
            api_key: {KEY}
            models: [gpt-a, gpt-b]
            rpm: 500
            tpm: 90000.5
            max_concurrency: 16
            weight: 2
          - name: local
            base_url: http://127.0.0.1:8000/v1
            api_key_env: MPD_TEST_KEY
    """)
    first, second = load_endpoints(path)
    assert first == Endpoint("api_1", "https://api.example.test/v1", KEY, ("gpt-a", "gpt-b"),
                             500.0, 90000.5, 16, 2.0)
    assert second.api_key == "sk-test-0002-env"
    assert (second.models, second.rpm, second.tpm, second.max_concurrency, second.weight) == \
        ((), None, None, None, 1.0)


def test_good_file_as_list(tmp_path):
    """A bare YAML list is accepted too; an endpoint without a key (a local server) gets an empty key."""
    path = write(tmp_path, """
        - name: vllm
          base_url: http://127.0.0.1:8000/v1
    """)
    [endpoint] = load_endpoints(str(path))
    assert (endpoint.name, endpoint.api_key) == ("vllm", "")


def test_missing_env_var_names_file_endpoint_and_variable(tmp_path, monkeypatch):
    """api_key_env naming an unset variable is a ConfigError naming the file, endpoint and variable."""
    monkeypatch.delenv("MPD_TEST_UNSET", raising=False)
    path = write(tmp_path, """
        - name: api_9
          base_url: https://api.example.test/v1
          api_key_env: MPD_TEST_UNSET
    """)
    with pytest.raises(ConfigError) as info:
        load_endpoints(path)
    message = str(info.value)
    assert str(path) in message and "api_9" in message and "MPD_TEST_UNSET" in message


def test_unknown_key_is_named(tmp_path):
    """A misspelt key is rejected with the key, the endpoint and the file in the message."""
    path = write(tmp_path, """
        - name: api_1
          base_url: https://api.example.test/v1
          rmp: 50
    """)
    with pytest.raises(ConfigError, match="rmp") as info:
        load_endpoints(path)
    assert str(path) in str(info.value) and "api_1" in str(info.value)


def test_unknown_top_level_key(tmp_path):
    """Only `endpoints:` may appear at the top of a mapping."""
    path = write(tmp_path, """
        endpoints: []
        defaults: {rpm: 5}
    """)
    with pytest.raises(ConfigError, match="defaults"):
        load_endpoints(path)


def test_duplicate_name(tmp_path):
    """Two endpoints with one name are rejected, naming the name."""
    path = write(tmp_path, """
        - {name: twin, base_url: http://a.test}
        - {name: twin, base_url: http://b.test}
    """)
    with pytest.raises(ConfigError, match="twin"):
        load_endpoints(path)


@pytest.mark.parametrize(("field", "value"), [
    ("rpm", "'fast'"), ("rpm", "0"), ("rpm", "true"), ("rpm", "-5"), ("tpm", "[1]"),
    ("max_concurrency", "2.5"), ("max_concurrency", "0"), ("weight", "-1"), ("weight", ".inf"),
    ("models", "gpt-a"), ("models", "[1, 2]"), ("base_url", "42"), ("api_key_env", "[X]"),
])
def test_bad_types_name_the_key(tmp_path, field, value):
    """Wrong types and non-positive limits are ConfigErrors naming the file, the endpoint and the key."""
    extra = "" if field == "base_url" else "  base_url: http://a.test\n"
    path = tmp_path / "endpoints.yaml"
    path.write_text(f"- name: api_1\n{extra}  {field}: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_endpoints(path)
    message = str(info.value)
    assert field in message and "api_1" in message and str(path) in message


@pytest.mark.parametrize("text", ["", "42", "endpoints: []", "- just a string",
                                  "- {base_url: http://a.test}"])
def test_bad_shapes(tmp_path, text):
    """An empty file, a scalar, an empty list, a non-mapping item or a nameless endpoint are rejected."""
    path = tmp_path / "endpoints.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="endpoints.yaml"):
        load_endpoints(path)


def test_key_and_key_env_together(tmp_path, monkeypatch):
    """api_key and api_key_env together are ambiguous."""
    monkeypatch.setenv("MPD_TEST_KEY", "sk-test-0003-env")
    path = write(tmp_path, f"""
        - {{name: a, base_url: http://a.test, api_key: {KEY}, api_key_env: MPD_TEST_KEY}}
    """)
    with pytest.raises(ConfigError, match="not both"):
        load_endpoints(path)


def test_errors_never_show_the_key(tmp_path):
    """A key of the wrong type, or a YAML error on the key's line, never shows the key."""
    path = write(tmp_path, """
        - name: a
          base_url: http://a.test
          api_key: [sk-test-0004-list]
    """)
    with pytest.raises(ConfigError) as info:
        load_endpoints(path)
    assert "sk-test-0004" not in str(info.value)
    path.write_text("- name: a\n  api_key: sk-test-0005-bad: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_endpoints(path)
    assert "sk-test-0005" not in str(info.value) and "line" in str(info.value)


def test_missing_file(tmp_path):
    """A missing endpoints file is a ConfigError naming the path."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_endpoints(path)


def test_bad_yaml(tmp_path):
    """Unparsable YAML is a ConfigError naming the file and the position."""
    path = write(tmp_path, "- name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"endpoints.yaml: not valid YAML at line \d+"):
        load_endpoints(path)


def test_openai_api_keys_shorthand():
    """OPENAI_API_KEYS=k1,k2 gives key_1, key_2 on one base URL; blanks and repeats are dropped."""
    endpoints = endpoints_from_env("https://api.example.test/v1",
                                   " sk-test-0001 ,, sk-test-0002,sk-test-0001, ", rpm=60, tpm=1000)
    assert [e.name for e in endpoints] == ["key_1", "key_2"]
    assert [e.api_key for e in endpoints] == ["sk-test-0001", "sk-test-0002"]
    assert all(e.base_url == "https://api.example.test/v1" and e.rpm == 60 and e.tpm == 1000
               for e in endpoints)


@pytest.mark.parametrize(("url", "keys", "rpm"), [
    ("https://a.test", " , ", None), ("", "sk-test-0001", None), ("https://a.test", "sk-test-0001", 0)])
def test_openai_api_keys_shorthand_rejects(url, keys, rpm):
    """No key, no base URL or a non-positive rpm is a ConfigError."""
    with pytest.raises(ConfigError, match="OPENAI_API_KEYS"):
        endpoints_from_env(url, keys, rpm=rpm)


def test_select_pool_keeps_file_order():
    """--pool picks the named endpoints, in the order of the file."""
    endpoints = endpoints_from_env("https://a.test", "sk-test-0001,sk-test-0002,sk-test-0003")
    assert [e.name for e in select_pool(endpoints, "key_3, key_1")] == ["key_1", "key_3"]


def test_select_pool_unknown_name_lists_known_names():
    """An unknown --pool name is a ConfigError that lists the known names."""
    endpoints = endpoints_from_env("https://a.test", "sk-test-0001,sk-test-0002")
    with pytest.raises(ConfigError) as info:
        select_pool(endpoints, "key_1,api_7")
    assert "api_7" in str(info.value) and "key_1, key_2" in str(info.value)
    with pytest.raises(ConfigError, match="key_1, key_2"):
        select_pool(endpoints, " , ")
