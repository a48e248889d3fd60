"""Signals end to end: a SIGTERM says what happened, once, whoever receives it."""
from __future__ import annotations

import json
import os
import signal

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, line_count, wait_for, write_jsonl

SHUTDOWN = "no new requests"    # the manager's stop message


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def _worker_pids(wd: Workdir) -> list[int]:
    paths = list(wd.checkpoints.glob("*_status.json"))
    if not paths:
        return []
    try:
        return [w["pid"] for w in json.loads(paths[0].read_text())["workers"] if w.get("pid")]
    except (ValueError, KeyError):
        return []   # caught mid-rewrite: ask again


def test_sigterm_to_one_worker_ends_only_that_worker_quietly(tmp_path):
    """A worker given SIGTERM answers what it holds and exits; the run finishes every row, no stop message."""
    with MockServer(latency_ms=100) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(40))
        proc = wd.popen(processes=2)
        assert wait_for(lambda: len(_worker_pids(wd)) == 2, 30, proc), proc.communicate(timeout=30)[1]
        victim = _worker_pids(wd)[0]
        os.kill(victim, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert SHUTDOWN not in err
    assert sorted(r["id"] for r in wd.results()) == sorted(f"r{i}" for i in range(40))
    assert victim not in _worker_pids(wd)


def test_sigterm_to_the_process_group_prints_the_shutdown_message_once(tmp_path):
    """SIGTERM to the manager and every worker at once: one stop message, exit 130, rows written once."""
    with MockServer(latency_ms=300) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(200))
        proc = wd.popen(processes=4, start_new_session=True)
        assert wait_for(lambda: line_count(wd.output) >= 4, 30, proc), proc.communicate(timeout=30)[1]
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count(SHUTDOWN) == 1, err
    ids = [r["id"] for r in wd.results()]
    assert len(ids) == len(set(ids)) and 4 <= len(ids) < 200
