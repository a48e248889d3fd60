"""A `.env` that holds a key and that group or others can read gets a one-line chmod 600 warning."""
from __future__ import annotations

import logging
import os

import pytest

from mpdistill.config import read_env_file

KEY = "sk-" + "envfile" + "00112233445566"   # built at run time: no key-shaped literal in the repository


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MPDISTILL_TEST_API_KEY", raising=False)
    path = tmp_path / ".env"
    path.write_text(f"MPDISTILL_TEST_API_KEY={KEY}\n")
    yield path
    os.environ.pop("MPDISTILL_TEST_API_KEY", None)


def test_world_readable_env_with_a_key_warns_once_naming_file_and_chmod(env_file, caplog):
    """Mode 644 with a key inside: one warning naming the file and `chmod 600`, never the key."""
    env_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_env_file(env_file)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = record.getMessage()
    assert str(env_file) in message and f"chmod 600 {env_file}" in message and "\n" not in message
    assert KEY not in message and os.environ["MPDISTILL_TEST_API_KEY"] == KEY


@pytest.mark.parametrize("mode, text", [(0o600, f"MPDISTILL_TEST_API_KEY={KEY}\n"),
                                        (0o644, "MPDISTILL_MODEL=mock-model\n")])
def test_private_env_or_one_without_keys_is_silent(env_file, caplog, mode, text):
    """A 600 file, or a readable one that holds no key, loads without a warning."""
    env_file.write_text(text)
    env_file.chmod(mode)
    with caplog.at_level(logging.WARNING):
        read_env_file(env_file)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    os.environ.pop("MPDISTILL_MODEL", None)
