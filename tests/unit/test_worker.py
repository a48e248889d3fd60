"""The worker's one job: a task in, an outcome out, whatever happens during the call."""
from __future__ import annotations

from mpdistill.errors import from_info
from mpdistill.engine.worker import Task, WorkerSpec, execute


def test_an_unexpected_exception_comes_back_as_a_retryable_outcome():
    """A bug or SDK surprise during the call is reported, so the manager never waits forever."""
    spec = WorkerSpec(endpoints=(), timeout=1.0)
    task = Task(7, "e", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    outcome = execute(task, object(), spec)   # not an SDK client: the call raises AttributeError
    assert outcome.tid == 7 and outcome.completion is None
    err = from_info(outcome.error)
    assert err.retryable and "AttributeError" in str(err)


def test_a_bad_image_is_a_row_error_not_a_call():
    """A missing image fails the row (not retried) before any call is made."""
    spec = WorkerSpec(endpoints=(), timeout=1.0)
    task = Task(8, "e", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/no/such/image.png"}}]}]})
    outcome = execute(task, object(), spec)
    err = from_info(outcome.error)
    assert type(err).__name__ == "ImageError" and not getattr(err, "retryable", False)


def test_preload_warms_up_offline_and_makes_every_client():
    """preload runs the worker's call path offline (nothing sent) and makes one client per endpoint."""
    from mpdistill.engine.worker import WorkerSpec, preload
    from mpdistill.provider.endpoint import Endpoint
    spec = WorkerSpec(endpoints=(Endpoint("a", "http://127.0.0.1:9/v1"), Endpoint("b", "http://127.0.0.1:9/v1")),
                      timeout=5)
    clients = preload(spec)
    assert clients.get("a") is not clients.get("b")


def test_preload_imports_what_a_first_call_would_import_in_each_worker():
    """After preload, a call's host lookup imports nothing (the idna codec is there for workers to share)."""
    import subprocess
    import sys
    code = ("import sys; from mpdistill.engine.worker import WorkerSpec, preload; "
            "preload(WorkerSpec(endpoints=(), timeout=5)); print('encodings.idna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def _answer_pings(conn) -> None:
    from mpdistill.engine.worker import serve_signals
    serve_signals()
    while conn.recv() == "ping":
        conn.send("alive")


def test_a_worker_forked_by_a_thread_outlives_that_thread():
    """The kernel's parent-death signal follows the forking thread: a worker forked by a thread that
    then ends must live on (it watches the manager's pid instead)."""
    import threading
    import time
    import multiprocess as mp
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    box = []
    thread = threading.Thread(target=lambda: box.append(ctx.Process(target=_answer_pings, args=(theirs,),
                                                                    daemon=True)) or box[0].start())
    thread.start()
    thread.join()
    time.sleep(0.3)   # the kernel signals a thread's death as the thread ends
    try:
        ours.send("ping")
        assert ours.poll(10) and ours.recv() == "alive"
    finally:
        ours.send("stop")
        box[0].join(10)


def test_sigterm_during_a_call_answers_it_then_exits():
    """A -c 1 worker given SIGTERM mid-call sends that call's answer, then exits 0 (and takes no more)."""
    import os
    import pickle
    import signal
    import multiprocess as mp
    from mpdistill.engine.worker import worker_main
    from mpdistill.mock.server import MockServer
    from mpdistill.provider.endpoint import Endpoint
    from tests.conftest import wait_for
    with MockServer(latency_ms=1500) as server:
        spec = WorkerSpec(endpoints=(Endpoint("e", server.url),), timeout=30)
        ctx = mp.get_context("fork")
        ours, theirs = ctx.Pipe()
        worker = ctx.Process(target=worker_main, args=(theirs, spec), daemon=True)
        worker.start()
        request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        ours.send_bytes(pickle.dumps(Task(1, "e", request)))
        assert wait_for(lambda: server.stats()["in_flight"] == 1, 30)
        os.kill(worker.pid, signal.SIGTERM)
        assert ours.poll(30) and pickle.loads(ours.recv_bytes()) == []   # the worker says it is ready
        assert ours.poll(30)
        outcome = pickle.loads(ours.recv_bytes())
        worker.join(30)
    assert outcome.tid == 1 and outcome.error is None and outcome.completion is not None
    assert worker.exitcode == 0
