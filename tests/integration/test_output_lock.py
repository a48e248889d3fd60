"""One run per output: the lock beside the output, with real processes, asserted on the files."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, clean_env, line_count, wait_for, write_jsonl

N = 60


def _rows(n=N):
    return [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(n)]


def _assert_exact(wd: Workdir, n=N):
    ids = [r["id"] for r in wd.results()]
    assert len(ids) == len(set(ids)), "duplicate rows in the output"
    assert set(ids) == {f"r{i}" for i in range(n)}


def _snapshot(wd: Workdir) -> dict:
    files = [wd.output, wd.errors, *wd.checkpoints.glob("*_checkpoint.pkl")]
    return {str(p): p.read_bytes() for p in files if p.exists()}


@pytest.fixture
def slow_server():
    with MockServer(latency_ms=40) as server:
        yield server


def test_second_run_while_first_is_stopped_exits_2_naming_the_holder(tmp_path, slow_server):
    """A second run while the first is SIGSTOPped exits 2 at once naming pid and host, touching nothing."""
    wd = Workdir(tmp_path, slow_server.url)
    write_jsonl(wd.input, _rows())
    first = wd.popen("--checkpoint-interval", "5", processes=2)
    try:
        assert wait_for(lambda: line_count(wd.output) >= 10, 30, first)
        os.kill(first.pid, signal.SIGSTOP)
        time.sleep(0.2)
        before = _snapshot(wd)
        second = wd.run(processes=2, timeout=30)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert _snapshot(wd) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    _assert_exact(wd)


@pytest.mark.parametrize("order", ["a-then-b", "b-then-a"])
def test_two_runs_started_together_one_runs_one_refuses(tmp_path, slow_server, order):
    """Two runs on one output started together (either first): one exits 2, the other does every row once."""
    wd = Workdir(tmp_path, slow_server.url)
    write_jsonl(wd.input, _rows())
    flags = {"a-then-b": (("-p", "2"), ("-p", "3")), "b-then-a": (("-p", "3"), ("-p", "2"))}[order]
    procs = [wd.popen(*extra, processes=2) for extra in flags]
    results = [p.communicate(timeout=90) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    refused = next(err for p, (_, err) in zip(procs, results) if p.returncode == 2)
    assert "is in use by" in refused
    _assert_exact(wd)


def test_after_sigkill_a_new_run_takes_the_lock_and_resumes_exactly(tmp_path, slow_server):
    """A SIGKILLed holder leaves no obstacle: the next run takes the lock and finishes every row once."""
    wd = Workdir(tmp_path, slow_server.url)
    write_jsonl(wd.input, _rows())
    first = wd.popen("--checkpoint-interval", "5", processes=2)
    assert wait_for(lambda: line_count(wd.output) >= 15, 30, first)
    first.kill()
    first.communicate(timeout=30)
    lock = json.loads((wd.output.parent / "results.lock").read_text())
    assert lock["pid"] == first.pid           # the file still names the dead holder …
    proc = wd.run(processes=4)
    assert proc.returncode == 0, proc.stderr  # … and is no obstacle
    _assert_exact(wd)


def test_output_equal_to_input_is_refused(workdir):
    """-o naming the input (directly or through a link) exits 2 and leaves the input as it was."""
    write_jsonl(workdir.input, _rows(5))
    before = workdir.input.read_bytes()
    link = workdir.root / "link.jsonl"
    link.symlink_to(workdir.input)
    for target in (workdir.input, link):
        args = [a if a != str(workdir.output) else str(target) for a in workdir.args()]
        proc = subprocess.run([sys.executable, "-m", "mpdistill", *args], cwd=workdir.root, env=clean_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "is the input" in proc.stderr
    assert workdir.input.read_bytes() == before
