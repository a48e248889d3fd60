"""Crash safety and exact resume: kill -9, torn lines, bad checkpoints, changed input, status."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mpdistill.mock.server import MockServer
from tests.conftest import MODES, ROOT, Workdir, clean_env, line_count, run_until_disk_full, wait_for, write_jsonl

N_ROWS = 400


def _rows(n=N_ROWS):
    return [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(n)]


def _assert_exact(wd: Workdir, n=N_ROWS):
    lines = wd.output.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate rows in the output"
    assert set(ids) == {f"r{i}" for i in range(n)}


def _wait_rows(wd: Workdir, at_least: int, proc, timeout=30.0):
    wait_for(lambda: line_count(wd.output) >= at_least, timeout, proc)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def slow_server():
    with MockServer(latency_ms=30) as server:
        yield server


@pytest.mark.parametrize("mode", MODES)
def test_kill9_manager_at_random_points_then_resume_exactly_once(tmp_path, slow_server, mode):
    """SIGKILL of the manager at several random points, rerun each time: every row exactly once."""
    wd = Workdir(tmp_path, slow_server.url, mode)
    write_jsonl(wd.input, _rows())
    rng = random.Random(7)
    for _ in range(4 if mode == "process" else 2):   # the other modes: fewer rounds, same check
        proc = wd.popen("--checkpoint-interval", "7", processes=8)
        done = wd.output.read_bytes().count(b"\n") if wd.output.exists() else 0
        _wait_rows(wd, done + rng.randint(10, 60), proc)
        time.sleep(rng.random() * 0.05)
        proc.kill()
        proc.communicate(timeout=30)
    proc = wd.run(processes=8)
    assert proc.returncode == 0, proc.stderr
    _assert_exact(wd)


@pytest.mark.parametrize("mode", MODES)
def test_kill9_of_a_worker_requeues_its_rows(tmp_path, slow_server, mode):
    """A worker killed mid-run is replaced and its in-flight rows are redone; nothing lost."""
    wd, proc, workers = _midway(tmp_path, slow_server.url, mode, 200)
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _assert_exact(wd, 200)


@pytest.mark.parametrize("mode", MODES)
def test_workers_exit_when_the_manager_is_killed(tmp_path, slow_server, mode):
    """kill -9 of the manager mid-run leaves no worker behind (none is told; each notices)."""
    _, proc, workers = _midway(tmp_path, slow_server.url, mode, 2000)
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_for(lambda: not any(_running(pid) for pid in workers), 30), "a worker outlived its manager"


def _midway(tmp_path, url: str, mode: str, rows: int):
    """A -p 4 run of `rows` rows with 20 of them written: (workdir, manager process, worker pids)."""
    wd = Workdir(tmp_path, url, mode)
    write_jsonl(wd.input, _rows(rows))
    proc = wd.popen(processes=4)
    _wait_rows(wd, 20, proc)
    workers = _children(proc.pid)
    assert workers
    return wd, proc, workers


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_torn_last_line_is_backed_up_and_cut(workdir):
    """A crash mid-write leaves a torn line: it is saved aside, cut off, and the row redone."""
    write_jsonl(workdir.input, _rows(20))
    assert workdir.run("--limit", "10").returncode == 0
    with open(workdir.output, "ab") as f:
        f.write(b'{"line": 11, "id": "r10", "answ')
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    _assert_exact(workdir, 20)
    torn = list(workdir.output.parent.glob("results.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == b'{"line": 11, "id": "r10", "answ'


def test_corrupt_checkpoint_is_backed_up_and_rebuilt(workdir, mock_server):
    """An unreadable checkpoint is kept aside and rebuilt from the output: no row is redone."""
    write_jsonl(workdir.input, _rows(30))
    assert workdir.run("--limit", "20").returncode == 0
    (ckpt,) = workdir.checkpoints.glob("*_checkpoint.pkl")
    ckpt.write_bytes(b"garbage, not a pickle")
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint unusable" in proc.stderr
    assert list(workdir.checkpoints.glob("*_checkpoint.pkl.bak-*"))
    assert mock_server.stats()["requests"] == 10
    _assert_exact(workdir, 30)


def test_checkpoint_ahead_of_output_loses_to_the_output(workdir, mock_server):
    """A checkpoint that claims rows the output lacks is rebuilt: the missing rows are redone."""
    write_jsonl(workdir.input, _rows(30))
    assert workdir.run("--limit", "20").returncode == 0
    lines = workdir.output.read_bytes().splitlines(keepends=True)
    workdir.output.write_bytes(b"".join(lines[:12]))  # the output lost 8 rows the checkpoint counts
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert "the output wins" in proc.stderr
    assert mock_server.stats()["requests"] == 18
    _assert_exact(workdir, 30)


def test_changed_input_stops_unless_restart(workdir):
    """A changed input is refused with exit 2; --restart starts over and keeps the old output."""
    write_jsonl(workdir.input, _rows(20))
    assert workdir.run("--limit", "5").returncode == 0
    write_jsonl(workdir.input, [{"id": f"new{i}", "prompt": "x"} for i in range(20)])
    proc = workdir.run()
    assert proc.returncode == 2 and "changed since" in proc.stderr
    proc = workdir.run("--restart")
    assert proc.returncode == 0, proc.stderr
    assert {r["id"] for r in workdir.results()} == {f"new{i}" for i in range(20)}
    assert list(workdir.output.parent.glob("results.jsonl.bak-*"))


def test_rerun_of_a_finished_run_makes_no_call(workdir, mock_server):
    """A finished run (checkpoint cleared) is recovered from its output: no API call, says so."""
    write_jsonl(workdir.input, _rows(25))
    assert workdir.run().returncode == 0
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 0
    assert "Nothing to do" in proc.stderr
    assert mock_server.stats()["requests"] == 0
    _assert_exact(workdir, 25)


def test_status_while_running_and_after(tmp_path):
    """--status reads live figures from another process while running, and the final state after."""
    with MockServer(latency_ms=200) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(200))
        proc = wd.popen(processes=4)
        _wait_rows(wd, 10, proc)
        time.sleep(1.2)
        status = subprocess.run([sys.executable, str(ROOT / "run_multiprocess.py"), "--status",
                                 "--checkpoint-dir", str(wd.checkpoints)], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0
        assert "[running]" in status.stdout and "/200" in status.stdout and "workers busy" in status.stdout
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        status = subprocess.run([sys.executable, str(ROOT / "run_multiprocess.py"), "--status",
                                 "--checkpoint-dir", str(wd.checkpoints)], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=30)
        assert "[stopped]" in status.stdout


def test_checkpoint_script_lists_and_clears(workdir):
    """`python test_checkpoint.py` lists checkpoints; `clear NAME` removes one, `clear` all."""
    from mpdistill.state.checkpoint import CheckpointManager
    for name in ("model-a", "model-b"):
        ckpt = CheckpointManager(5, name=name, directory=workdir.checkpoints)
        for key in range(1, 8):
            ckpt.mark_done(key)
        ckpt.save()
    script = [sys.executable, str(ROOT / "test_checkpoint.py")]
    kw = dict(cwd=workdir.root, env=clean_env(), capture_output=True, text=True, timeout=30)
    listing = subprocess.run(script + ["--checkpoint-dir", str(workdir.checkpoints)], **kw)
    assert listing.returncode == 0 and "model-a" in listing.stdout and "model-b" in listing.stdout
    assert subprocess.run(script + ["clear", "model-a", "--checkpoint-dir", str(workdir.checkpoints)], **kw).returncode == 0
    assert [p.name for p in workdir.checkpoints.glob("*.pkl")] == ["model-b_checkpoint.pkl"]
    assert subprocess.run(script + ["clear", "--checkpoint-dir", str(workdir.checkpoints)], **kw).returncode == 0
    assert not list(workdir.checkpoints.glob("*.pkl"))
    listing = subprocess.run(script + ["--checkpoint-dir", str(workdir.checkpoints)], **kw)
    assert "No checkpoints" in listing.stdout


@pytest.mark.parametrize("mode", MODES)
def test_disk_full_stops_cleanly_and_rerun_completes(workdir, mode):
    """A write that fails (file size limit as a stand-in for a full disk) stops the run with exit 75,
    every line on disk whole; the rerun completes every row exactly once."""
    workdir.mode = mode
    proc = run_until_disk_full(workdir)
    assert proc.returncode == 75, proc.stderr
    assert "cannot write" in proc.stderr
    lines = workdir.output.read_bytes()
    assert lines and lines.endswith(b"\n") and len(lines) <= 30_000
    for line in lines.splitlines():
        json.loads(line)
    assert not workdir.failures()
    rerun = workdir.run(processes=4)
    assert rerun.returncode == 0, rerun.stderr
    _assert_exact(workdir, 200)


def test_retry_failed_runs_the_failed_rows_again(workdir, mock_server):
    """Failed rows count as done on a rerun; --retry-failed tries them again and keeps the old errors file."""
    write_jsonl(workdir.input, [{"id": "ok", "prompt": "fine"}, {"id": "flaky", "prompt": "[[fail:500:2]] x"}])
    assert workdir.run("--max-retries", "1").returncode == 3
    mock_server.reset_stats()
    assert workdir.run("--max-retries", "1").returncode == 3       # failed rows are not retried...
    assert mock_server.stats()["requests"] == 0
    proc = workdir.run("--retry-failed")                            # ...unless asked
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in workdir.results()) == ["flaky", "ok"]
    assert mock_server.stats()["requests"] == 1
    assert list(workdir.errors.parent.glob("results.errors.jsonl.bak-*"))
