"""Batch mode (--via batch) against the mock's Files/Batches API: exactly once through kills,
failed and expired batches, partial failures, --stop and --cancel-batches, two keys."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from mpdistill.batch.crash import ENV as CRASH_ENV
from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, clean_env, read_jsonl, wait_for, write_jsonl

FAST = ("--via", "batch", "--batch-size", "10", "--batch-poll", "0.05")


def _rows(n: int, extra=lambda i: "") -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"prompt {i}{extra(i)}"} for i in range(n)]


def _run(wd: Workdir, *extra: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mpdistill", *wd.args(*FAST, *extra)]
    return subprocess.run(cmd, cwd=wd.root, env=clean_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def _ids(wd: Workdir) -> list[str]:
    return [r["id"] for r in wd.results()]


def _assert_exactly_once(wd: Workdir, n: int) -> None:
    ids = _ids(wd)
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert set(ids) == {f"r{i}" for i in range(n)}


def _journal_path(wd: Workdir):
    """Beside the job's checkpoint, which is named after its output."""
    from mpdistill.config import OutputFiles
    from mpdistill.state.batches import journal_path
    return journal_path(OutputFiles(wd.output, wd.checkpoints).checkpoint)


def _journal(wd: Workdir) -> list[dict]:
    return read_jsonl(_journal_path(wd))


@pytest.fixture
def server():
    with MockServer() as s:
        yield s


def test_three_batch_job_writes_every_row_once(tmp_path, server):
    """25 rows at 10 a batch: 3 batches created, each row in one of them, every answer written once."""
    wd = Workdir(tmp_path, server.url)
    write_jsonl(wd.input, _rows(25))
    proc = _run(wd)
    assert proc.returncode == 0, proc.stderr
    _assert_exactly_once(wd, 25)
    stats = server.stats()
    assert stats["batches_created"] == 3
    assert set(stats["batch_rows"].values()) == {1}
    assert stats["chat_requests"] == 0          # nothing went through the online endpoint
    assert {r["batch_id"] for r in wd.results()} and all(r["endpoint"] == "default" for r in wd.results())
    summary = json.loads(wd.summary.read_text())
    assert summary["via"] == "batch" and summary["batches_created"] == 3 and summary["succeeded"] == 25
    assert not _journal_path(wd).exists()   # a finished job leaves no journal


def test_failed_and_expired_batches_are_resubmitted(tmp_path):
    """The first batch fails, the second expires half done: their unanswered rows go into new batches."""
    with MockServer(batch_script=("failed", "expired")) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(25))
        proc = _run(wd)
        stats = server.stats()
    assert proc.returncode == 0, proc.stderr
    _assert_exactly_once(wd, 25)
    assert stats["batch_outcomes"][:2] == ["failed", "expired"] and stats["batches_created"] >= 4
    counts = stats["batch_rows"]
    assert all(counts[f"mpd-{k}"] == 2 for k in range(1, 11))      # batch 1 failed: all resubmitted once
    assert sum(counts[f"mpd-{k}"] for k in range(11, 21)) == 15    # batch 2 expired: half resubmitted
    assert all(counts[f"mpd-{k}"] == 1 for k in range(21, 26))
    assert max(r["attempts"] for r in wd.results()) == 2


def test_partial_failures_inside_a_batch(tmp_path, server):
    """A 400 inside a batch is an error row with the provider's reason; a 500 once is resubmitted."""
    wd = Workdir(tmp_path, server.url)
    marks = {3: " [[fail:400]]", 7: " [[fail:500:1]]"}
    write_jsonl(wd.input, _rows(12, lambda i: marks.get(i, "")))
    proc = _run(wd)
    assert proc.returncode == 3, proc.stderr
    assert sorted(_ids(wd)) == sorted(f"r{i}" for i in range(12) if i != 3)
    [failure] = wd.failures()
    assert failure["id"] == "r3" and failure["status"] == 400 and "scripted failure 400" in failure["reason"]
    assert server.stats()["batch_rows"]["mpd-8"] == 2


CRASH_POINTS = ("packing:5", "after_upload", "before_create", "after_create", "polling:2", "downloading:3")


def test_kill9_at_each_step_then_rerun_exactly_once(tmp_path):
    """SIGKILL at each step of the batch life cycle in turn (packing, after upload, before and after
    create, polling, downloading), rerunning each time: every id once, no row in two batches."""
    with MockServer() as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(25))
        for point in CRASH_POINTS:
            crashed = _run(wd, env={CRASH_ENV: point})
            assert crashed.returncode == -9, (point, crashed.stderr)
            assert len(_ids(wd)) == len(set(_ids(wd)))
        proc = _run(wd)
        stats = server.stats()
    assert proc.returncode == 0, proc.stderr
    _assert_exactly_once(wd, 25)
    assert set(stats["batch_rows"].values()) == {1}, "a row was submitted in two batches"
    assert stats["batches_created"] == 3


@pytest.mark.parametrize("reads", [True, False])
def test_two_keys_one_revoked_mid_run(tmp_path, reads):
    """Key A is revoked after its first batch: new batches go to key B; A's batch is still collected
    when the provider lets A read it, else its rows are submitted again through B (each written once)."""
    with MockServer(api_keys=["sk-key-aaaa", "sk-key-bbbb"], batch_seconds=3) as server:
        wd = Workdir(tmp_path, None)
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(f"endpoints:\n"
                             f"  - {{name: api_a, base_url: '{server.url}', api_key: sk-key-aaaa, batch_max_in_flight: 1}}\n"
                             f"  - {{name: api_b, base_url: '{server.url}', api_key: sk-key-bbbb, batch_max_in_flight: 3}}\n")
        write_jsonl(wd.input, _rows(40))
        revoked = threading.Event()

        def revoke() -> None:
            if wait_for(lambda: server.stats()["batches_by_key"].get("sk-key-aaaa", 0) >= 1, 200):
                server.revoke_key("sk-key-aaaa", reads=reads)
                revoked.set()
        thread = threading.Thread(target=revoke, daemon=True)
        thread.start()
        proc = _run(wd, "--endpoints", str(endpoints))
        thread.join(30)
        stats = server.stats()
    assert revoked.is_set()
    assert proc.returncode == 0, proc.stderr
    _assert_exactly_once(wd, 40)
    twice = {c for c, n in stats["batch_rows"].items() if n == 2}
    assert twice == (set() if reads else {f"mpd-{k}" for k in range(1, 11)})   # A's batch: collected, or redone
    assert stats["batches_by_key"]["sk-key-aaaa"] == 1
    assert stats["batches_by_key"]["sk-key-bbbb"] == (3 if reads else 4)
    summary = json.loads(wd.summary.read_text())
    disabled = {e["name"]: e["disabled"] for e in summary["endpoints"]}
    assert disabled["api_b"] is False and (reads or disabled["api_a"] is True)   # a refused poll disables A


def test_stop_leaves_batches_for_the_next_run_and_cancel_collects_them(tmp_path):
    """--stop ends the run with its batches open; --cancel-batches cancels them; a rerun finishes."""
    with MockServer(batch_seconds=3600) as server:       # never done by itself: only the cancel ends them
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(25))
        cmd = [sys.executable, "-m", "mpdistill", *wd.args(*FAST)]
        proc = subprocess.Popen(cmd, cwd=wd.root, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: sum(e["ev"] == "created" for e in _journal(wd)) == 3, 200, proc)
        stop = subprocess.run([sys.executable, "-m", "mpdistill", *wd.args("--stop")], cwd=wd.root,
                              env=clean_env(), capture_output=True, text=True, timeout=200)
        assert stop.returncode == 0, stop.stderr
        _, err = proc.communicate(timeout=200)
        assert proc.returncode == 0, err
        assert wd.results() == [] and sum(e["ev"] == "closed" for e in _journal(wd)) == 0
        cancel = _run(wd, "--cancel-batches")
        assert cancel.returncode == 0, cancel.stderr
        stats = server.stats()
    half = _ids(wd)
    assert 0 < len(half) < 25 and stats["batches_created"] == 3      # cancelled halfway: half answered
    assert all(e["ev"] != "created" or e["local"] for e in _journal(wd))
    with MockServer() as fresh:                                        # the rest goes round again
        final = _run(Workdir(tmp_path, fresh.url))
    assert final.returncode == 0, final.stderr
    _assert_exactly_once(wd, 25)


def test_summary_cost_is_at_the_batch_price(tmp_path, server):
    """With model prices, batch mode's cost is half the online price (or the configured share)."""
    from pathlib import Path

    from mpdistill import RunConfig, run
    from mpdistill.api import JobSpec
    src = write_jsonl(tmp_path / "in.jsonl", _rows(12))
    for share, name in ((0.5, "half"), (0.25, "quarter")):
        out = tmp_path / f"{name}.jsonl"
        cfg = RunConfig(input=str(src), output=str(out), base_url=server.url, api_key="sk-test-0001",
                        checkpoint_dir=str(tmp_path / name), progress=False, via="batch", batch_poll=0.05,
                        batch_price=share)
        summary = run(cfg, jobs=[JobSpec(name, "m", Path(out), prices=(1.0, 2.0))])
        online = (summary["prompt_tokens"] * 1.0 + summary["completion_tokens"] * 2.0) / 1e6
        assert summary["cost"] == pytest.approx(online * share, rel=1e-3)
        assert summary["cost_at_online_price"] == pytest.approx(online, rel=1e-3)
