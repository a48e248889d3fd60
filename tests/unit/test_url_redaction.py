"""Credentials inside URLs (userinfo, key-like query parameters) are masked wherever a URL is shown."""
from __future__ import annotations

import logging

import pytest

from mpdistill.engine.keypool import KeyPool
from mpdistill.logs import RedactFilter, redact_text, register_secrets
from mpdistill.provider.endpoint import Endpoint, mask_url, url_secrets

SECRET = "sk-" + "inurl" + "9f8e7d6c5b4a3210"      # built at run time: no key-shaped literal in the repository
TOKEN = "tok" + "0123456789abcdef"


@pytest.mark.parametrize("url", [
    f"http://user:{SECRET}@api.example.com/v1",
    f"http://{SECRET}@api.example.com/v1",
    f"https://api.example.com/v1?api_key={SECRET}",
    f"https://api.example.com/v1?x=1&access_token={TOKEN}&sig={TOKEN}",
    f"https://api.example.com/v1?Key={SECRET}#frag",
])
def test_mask_url_hides_userinfo_and_key_like_query_values(url):
    """mask_url keeps host and path but not the credential; url_secrets finds each credential."""
    masked = mask_url(url)
    assert SECRET not in masked and TOKEN not in masked
    assert "api.example.com/v1" in masked and "…" in masked
    assert any(s in (SECRET, TOKEN) for s in url_secrets(url))


def test_plain_urls_are_unchanged_and_hold_no_secrets():
    """A URL without credentials (or with harmless query params) is shown as it is."""
    for url in ("https://api.openai.com/v1", "http://127.0.0.1:8000/v1?model=qwen", "not a url"):
        assert mask_url(url) == url and url_secrets(url) == []


def test_register_secrets_with_a_url_masks_its_password_everywhere():
    """The key registry takes a URL: its password is masked in logs even when printed alone."""
    register_secrets([f"http://bob:{SECRET}@h.example/v1"])
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "password is %s", (SECRET,), None)
    RedactFilter().filter(record)
    assert SECRET not in record.getMessage()


def test_urls_in_any_log_text_are_masked_even_unregistered():
    """A URL with credentials nobody registered is masked by the log filter."""
    text = redact_text(f"cannot connect to http://eve:{TOKEN}@10.0.0.9:8000/v1 (refused)")
    assert TOKEN not in text and "10.0.0.9:8000/v1" in text


def test_keypool_snapshot_shows_the_masked_url():
    """The endpoint table written to the status file and summary never carries URL credentials."""
    endpoint = Endpoint("e1", f"http://u:{SECRET}@h.example/v1?api_key={SECRET}", SECRET)
    assert SECRET not in endpoint.display_url and SECRET in endpoint.secrets
    (shown,) = KeyPool([endpoint]).snapshot()
    assert SECRET not in repr(shown) and "h.example/v1" in shown["base_url"]
