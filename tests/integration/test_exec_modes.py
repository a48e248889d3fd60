"""Execution modes against the real pool: async holds many calls per process, thread runs one
process, workers are forked as the load needs them, and a mode that gains nothing gets a hint."""
from __future__ import annotations

import json
import signal

import pytest

from mpdistill.mock.server import MockServer
from tests.conftest import MODES, Workdir, wait_for, write_jsonl


def _status(wd: Workdir) -> dict:
    path = wd.checkpoints / "mock-model_status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(n)]


def test_async_worker_holds_many_calls_in_one_process(tmp_path):
    """--mode async -p 1 -c 40: one worker process has all 40 calls in flight at once, and every row is done."""
    with MockServer(latency_ms=1500) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(40))
        proc = wd.popen("--mode", "async", "-c", "40", processes=1)
        assert wait_for(lambda: _status(wd).get("in_flight", 0) == 40, 30, proc), _status(wd)
        assert len(_status(wd)["workers"]) == 1
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(r["id"] for r in wd.results()) == sorted(f"r{i}" for i in range(40))


def test_thread_mode_runs_one_process_and_hints_that_p_is_unused(tmp_path):
    """--mode thread -p 8 -c 6: one worker process with six calls in flight; -p is named as unused."""
    with MockServer(latency_ms=800) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(24))
        proc = wd.popen("--mode", "thread", "-c", "6", processes=8)
        assert wait_for(lambda: _status(wd).get("in_flight", 0) == 6, 30, proc), _status(wd)
        assert len(_status(wd)["workers"]) == 1
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "hint: --mode thread runs one worker process" in err and "-p 8 is not used" in err
    assert len(wd.results()) == 24


def test_async_with_one_call_per_process_gets_a_hint_and_still_finishes(workdir):
    """--mode async -c 1 is no error: the run finishes and stderr says to give it many calls."""
    write_jsonl(workdir.input, _rows(5))
    proc = workdir.run("--mode", "async", "-c", "1", processes=2)
    assert proc.returncode == 0, proc.stderr
    assert "hint: --mode async with -c 1" in proc.stderr
    assert len(workdir.results()) == 5


def test_workers_are_forked_as_the_load_needs_them(tmp_path):
    """-p 8 with two calls in flight at most forks two workers, not eight."""
    with MockServer(latency_ms=3000) as server:   # long enough for a status write to see both in flight
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(2))
        proc = wd.popen("--grace", "5", processes=8)
        assert wait_for(lambda: _status(wd).get("in_flight", 0) == 2, 30, proc), _status(wd)
        assert len(_status(wd)["workers"]) == 2
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert len(_status(wd)["workers"]) <= 2


def test_unknown_mode_is_a_usage_error(workdir):
    """--mode fibers exits 2 naming the choices."""
    write_jsonl(workdir.input, _rows(1))
    proc = workdir.run("--mode", "fibers")
    assert proc.returncode == 2 and "process" in proc.stderr and "async" in proc.stderr



def test_async_worker_keeps_reading_tasks_while_the_manager_is_not_reading_outcomes():
    """150 tasks written without reading a single outcome: the async worker keeps taking tasks
    (its outcomes wait in a sender thread), so neither side blocks forever on a full pipe."""
    import pickle
    import threading

    import multiprocess as mp

    from mpdistill.engine.aio import async_worker_main
    from mpdistill.engine.worker import Task, WorkerSpec
    from mpdistill.provider.endpoint import Endpoint

    with MockServer() as server:
        spec = WorkerSpec(endpoints=(Endpoint(name="a", base_url=server.url, api_key="sk-test-0001"),),
                          timeout=30, concurrency=150, mode="async")
        ctx = mp.get_context("fork")
        conn, child = ctx.Pipe(duplex=True)
        worker = ctx.Process(target=async_worker_main, args=(child, spec), daemon=True)
        worker.start()
        child.close()
        prompt = "x" * 4000   # 150 tasks and 150 outcomes: several times a pipe's 64 KiB each way
        tasks = [Task(i, "a", {"model": "m", "messages": [{"role": "user", "content": prompt}]}) for i in range(150)]
        writer = threading.Thread(target=lambda: [conn.send_bytes(pickle.dumps(t)) for t in tasks], daemon=True)
        writer.start()
        writer.join(30)
        try:
            assert not writer.is_alive(), "the worker stopped reading tasks: both pipes are full"
            outcomes = []
            while len(outcomes) < len(tasks):   # a message is a list of the outcomes that ended together
                outcomes.extend(pickle.loads(conn.recv_bytes()))
            assert sorted(o.tid for o in outcomes) == list(range(150))
            assert all(o.completion is not None for o in outcomes)
        finally:
            worker.kill()
            worker.join(5)


@pytest.mark.parametrize("mode", MODES)
def test_a_proxy_no_client_can_use_ends_the_run_before_any_call(tmp_path, monkeypatch, mode):
    """ALL_PROXY=socks5://… ends the run with exit 2 naming the proxy (never its password) in every
    mode, before any call; the row is still to do."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw1234@127.0.0.1:1080")
    with MockServer() as server:
        wd = Workdir(tmp_path, server.url, mode)
        write_jsonl(wd.input, _rows(3))
        proc = wd.run(processes=2, timeout=60)
        assert server.stats()["requests"] == 0
    assert proc.returncode == 2, proc.stderr
    assert "socks5://127.0.0.1:1080" in proc.stderr and "NO_PROXY" in proc.stderr and "pw1234" not in proc.stderr
    assert wd.results() == []
