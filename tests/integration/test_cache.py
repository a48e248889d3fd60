"""The response cache (--cache): a rerun into a new output makes no API call, in online and batch
mode; sampled requests are not replayed; --cache-only fails misses; a damaged file is rebuilt."""
from __future__ import annotations

import dataclasses
import json

import pytest

from mpdistill import RunConfig, run
from mpdistill.mock.server import MockServer
from tests.conftest import read_jsonl, write_jsonl


@pytest.fixture
def server():
    with MockServer() as s:
        yield s


def _cfg(tmp_path, server, out: str, n: int = 1000, **kw) -> RunConfig:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        write_jsonl(src, [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(n)])
    return RunConfig(input=str(src), output=str(tmp_path / out), model="m", base_url=server.url,
                     api_key="sk-test-0001", processes=2, concurrency=8, checkpoint_dir=str(tmp_path / "ck"),
                     log_dir=str(tmp_path / "logs"), progress=False, cache=str(tmp_path / "cache.sqlite"), **kw)


def test_second_run_into_a_new_output_makes_no_api_call(tmp_path, server):
    """1,000 rows answered once; the same job into another output is answered from the cache: 0 calls."""
    first = run(_cfg(tmp_path, server, "a.jsonl"))
    assert first["succeeded"] == 1000 and first["cache"]["stored"] == 1000
    calls = server.stats()["chat_requests"]
    second = run(_cfg(tmp_path, server, "b.jsonl"))
    assert server.stats()["chat_requests"] == calls
    assert second["cache"]["hits"] == 1000 and second["cache"]["saved_tokens"] > 0
    rows = read_jsonl(tmp_path / "b.jsonl")
    assert len(rows) == 1000 and {r["endpoint"] for r in rows} == {"cache"}
    assert {r["id"]: r["answer"] for r in rows} == {r["id"]: r["answer"] for r in read_jsonl(tmp_path / "a.jsonl")}


def test_batch_mode_uses_and_fills_the_same_cache(tmp_path, server):
    """Batch answers are stored; a rerun through the Batch API creates no batch at all."""
    batch = dict(via="batch", batch_max_requests=40, batch_poll=0.05)
    run(_cfg(tmp_path, server, "a.jsonl", n=100, **batch))
    created = server.stats()["batches_created"]
    assert created == 3
    second = run(_cfg(tmp_path, server, "b.jsonl", n=100, **batch))
    assert server.stats()["batches_created"] == created and second["cache"]["hits"] == 100
    assert len(read_jsonl(tmp_path / "b.jsonl")) == 100


def test_sampled_requests_are_not_replayed_unless_asked(tmp_path, server):
    """temperature > 0: not cached by default; with cache_sampled the rerun makes no call."""
    run(_cfg(tmp_path, server, "a.jsonl", n=20, temperature=0.7))
    run(_cfg(tmp_path, server, "b.jsonl", n=20, temperature=0.7))
    assert server.stats()["chat_requests"] == 40
    run(_cfg(tmp_path, server, "c.jsonl", n=20, temperature=0.7, cache_sampled=True))
    run(_cfg(tmp_path, server, "d.jsonl", n=20, temperature=0.7, cache_sampled=True))
    assert server.stats()["chat_requests"] == 60


def test_cache_only_fails_the_misses_without_calling(tmp_path, server):
    """--cache-only: cached rows are answered, the others become error rows; no API call."""
    run(_cfg(tmp_path, server, "a.jsonl", n=10, limit=6))
    calls = server.stats()["chat_requests"]
    summary = run(_cfg(tmp_path, server, "b.jsonl", n=10, cache_only=True))
    assert server.stats()["chat_requests"] == calls
    assert summary["succeeded"] == 6 and summary["failed"] == 4
    failures = read_jsonl(tmp_path / "b.errors.jsonl")
    assert {f["id"] for f in failures} == {"r6", "r7", "r8", "r9"}
    assert all(f["error"] == "CacheMissError" for f in failures)


def test_a_damaged_cache_file_is_set_aside_and_rebuilt(tmp_path, server, caplog):
    """Garbage in the cache file: a warning, the file kept aside, a fresh cache; the run completes."""
    (tmp_path / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    summary = run(_cfg(tmp_path, server, "a.jsonl", n=20))
    assert summary["succeeded"] == 20 and summary["cache"]["stored"] == 20
    assert list(tmp_path.glob("cache.sqlite.corrupt-*"))
    assert "damaged" in caplog.text


def test_a_damaged_cache_under_cache_only_is_a_clear_error(tmp_path, server):
    """--cache-only cannot answer from a damaged file: a ConfigError naming it, before any row."""
    from mpdistill.errors import ConfigError
    (tmp_path / "cache.sqlite").write_bytes(b"\x00garbage" * 200)
    with pytest.raises(ConfigError, match="cache.sqlite"):
        run(_cfg(tmp_path, server, "a.jsonl", n=5, cache_only=True))
    assert not (tmp_path / "a.jsonl").exists() or read_jsonl(tmp_path / "a.jsonl") == []


def test_cli_cache_flag_uses_the_default_file(tmp_path, server):
    """`--cache` without a path keeps the cache in the checkpoint folder; hits show in the summary."""
    import subprocess
    import sys
    from tests.conftest import clean_env
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p {i}"} for i in range(5)])
    base = [sys.executable, "-m", "mpdistill", "-i", "in.jsonl", "-m", "m", "--base-url", server.url,
            "--api-key", "sk-test-0001", "-p", "2", "--checkpoint-dir", "ck", "--log-dir", "logs",
            "--no-progress", "--cache"]
    for out in ("a.jsonl", "b.jsonl"):
        proc = subprocess.run(base + ["-o", out], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                              timeout=90)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ck" / "response_cache.sqlite").exists()
    assert json.loads((tmp_path / "b.summary.json").read_text())["cache"]["hits"] == 5
    assert server.stats()["chat_requests"] == 5
