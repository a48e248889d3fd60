"""The response cache's key and file: what the key depends on, and what it never does."""
from __future__ import annotations

import sqlite3

from mpdistill.provider.answer import Completion
from mpdistill.state.cache import ResponseCache, request_key


def _req(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_key_depends_on_model_messages_params_and_n():
    """Changing the model, the text, a generation param or n changes the key."""
    base = request_key(_req(), None, None)
    assert base == request_key(_req(), None, None)
    assert base != request_key({**_req(), "model": "other"}, None, None)
    assert base != request_key(_req(max_tokens=5), None, None)
    assert base != request_key(_req(n=2), None, None)
    assert base != request_key({"model": "m", "messages": [{"role": "user", "content": "ho"}]}, None, None)


def test_key_ignores_client_options():
    """Timeouts and extra headers change nothing of the answer, so nothing of the key."""
    assert request_key(_req(), None, None) == request_key(_req(timeout=5, extra_headers={"x": "1"}), None, None)


def _image_req(url):
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def test_images_are_keyed_by_content_not_path(tmp_path):
    """Two paths to the same bytes give one key; other bytes another; an unreadable image no key."""
    (tmp_path / "a.png").write_bytes(b"same bytes")
    (tmp_path / "b.png").write_bytes(b"same bytes")
    (tmp_path / "c.png").write_bytes(b"other bytes")
    a, b, c = (request_key(_image_req(n), tmp_path, None) for n in ("a.png", "b.png", "c.png"))
    assert a == b != c
    assert request_key(_image_req("missing.png"), tmp_path, None) is None
    assert a != request_key(_image_req("a.png"), tmp_path, 512)    # downscaling changes what is sent


def test_sampled_requests_have_no_key_unless_asked(tmp_path):
    """temperature > 0 is not cached by default; temperature 0 is; cache_sampled caches both."""
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.key(_req(temperature=0.8)) is None and cache.key(_req(temperature=0)) is not None
    assert ResponseCache(tmp_path / "c.sqlite", sampled=True).key(_req(temperature=0.8)) is not None


def test_store_and_read_back_in_a_second_connection(tmp_path):
    """An answer put by one cache object is read by another on the same file."""
    done = Completion("answer", "why", "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "m",
                      samples=({"answer": "a"}, {"answer": "b"}))
    one = ResponseCache(tmp_path / "c.sqlite").open()
    assert one.put("k", "m", done)
    two = ResponseCache(tmp_path / "c.sqlite").open()
    got = two.get("k")
    assert (got.answer, got.reasoning, got.usage["total_tokens"], got.samples[1]["answer"]) == ("answer", "why", 3, "b")
    assert two.get("absent") is None
    one.close()
    two.close()


def test_a_fault_mid_run_turns_the_cache_off_instead_of_raising(tmp_path, caplog):
    """A database error during a lookup is a warning and a miss; later calls are misses too."""
    cache = ResponseCache(tmp_path / "c.sqlite").open()
    cache._db.close()
    cache._db = sqlite3.connect(":memory:")   # a connection without the table: every query fails
    assert cache.get("k") is None and "cache is off" in caplog.text
    assert cache.put("k", "m", Completion("a", None, "stop", None, "m")) is False
