"""Worker processes: take `(task, endpoint)`, make one API call, send the outcome back.

Workers hold no scheduling state, never write files and never sleep on a backoff: the manager
decides everything. `execute` is the whole job of a worker and is a plain function, so the same
code can run in another executor (Ray actors, Slurm shards) unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..provider import chat
from ..provider.guards import DEFAULT_MAX_RESPONSE_BYTES
from ..provider.answer import Completion
from ..inputs import images
from ..provider.conn import route_to
from ..provider.endpoint import Endpoint
from ..errors import MpdistillError, TransientError, to_info

# A paced call starts this long before its slot: building the request and making its connection
# (a TLS handshake to a distant server) happen before, so the request leaves at the slot itself.
SEND_AHEAD_S = 0.05


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs, fixed for the whole run (keys included, so never logged)."""

    endpoints: tuple[Endpoint, ...]
    timeout: float
    concurrency: int = 1
    image_max_side: int | None = None
    base_dir: str | None = None
    mode: str = "process"   # process | thread | async (see engine.modes)
    image_roots: tuple[str, ...] = ()                    # --image-root: more folders images may come from
    max_image_bytes: int = images.DEFAULT_MAX_IMAGE_BYTES
    max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES

    @property
    def image_policy(self) -> images.ImagePolicy:
        """Where this run's local images may come from and how big they may be."""
        return images.ImagePolicy(self.base_dir, self.image_roots, self.max_image_bytes, self.image_max_side)


@dataclass(frozen=True)
class Task:
    """One request to make: `tid` identifies this attempt in the manager's in-flight table;
    `not_before` (time.monotonic(), shared by every process of the machine) is a paced request's
    slot. The worker holds the task until SEND_AHEAD_S before it, then builds the request and
    connects, and the connection holds the first write until the slot itself, the last `awake_s`
    of it awake (a process woken from a sleep may run late)."""

    tid: int
    endpoint: str
    request: dict
    not_before: float = 0.0
    awake_s: float = 0.0

    def hold_s(self) -> float:
        """Seconds until the worker starts this task's call (0.0 or less: now)."""
        return self.not_before - SEND_AHEAD_S - time.monotonic()


@dataclass(frozen=True)
class Outcome:
    """What came of a task: a completion, or an error described as plain data."""

    tid: int
    completion: Completion | None
    error: dict | None
    latency_s: float


def execute(task: Task, api: Any, spec: WorkerSpec) -> Outcome:
    """Make the call of `task` with client `api` (at its slot); never raises for a call or row problem."""
    if task.hold_s() > 0:
        time.sleep(max(0.0, task.hold_s()))
    start = time.monotonic()
    try:
        request = prepare(task.request, spec, deadline=start + spec.timeout)
        left = spec.timeout - (time.monotonic() - start)   # reading images counts in the deadline
        completion = chat.complete(api, request, timeout=left, not_before=task.not_before, awake_s=task.awake_s)
        return Outcome(task.tid, completion, None, since(start, task))
    except MpdistillError as err:
        return Outcome(task.tid, None, to_info(err), since(start, task))
    except Exception as err:  # a bug or an SDK surprise: report it, or the task would never come back
        return surprise(task.tid, err, start)


def since(start: float, task: Task) -> float:
    """Seconds the call of `task` took: from `start`, or from its slot when it was held until then."""
    return time.monotonic() - max(start, task.not_before)


def surprise(tid: int, err: Exception, start: float) -> Outcome:
    """The outcome of an exception no one expected (a bug, an SDK surprise): retryable, never lost."""
    error = TransientError(f"unexpected {type(err).__name__} in the worker: {err}")
    return Outcome(tid, None, to_info(error), time.monotonic() - start)


def prepare(request: dict, spec: WorkerSpec, deadline: float | None = None) -> dict:
    """Encode the row's local images (reading them counts in the call's deadline); text passes untouched."""
    messages = images.build_messages(request["messages"], spec.image_policy, deadline)
    if messages is request["messages"]:
        return request
    return {**request, "messages": messages}


class _Clients:
    """The chat client of every endpoint, made on first use (connection pools are per process)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = spec
        self._by_name = {e.name: e for e in spec.endpoints}
        self._clients: dict[str, chat.ChatClient] = {}
        self._lock = threading.Lock()

    def make_all(self) -> _Clients:
        """Make every endpoint's client now (in the manager, before forking: see `preload`)."""
        for name in self._by_name:
            self.get(name)
        return self

    def get(self, name: str) -> chat.ChatClient:
        with self._lock:
            if name not in self._clients:
                spec = self._spec
                self._clients[name] = chat.chat_client(self._by_name[name], spec.timeout, spec.concurrency,
                                                       spec.max_response_bytes)
            return self._clients[name]


def preload(spec: WorkerSpec) -> _Clients:
    """The SDK warmed up and every endpoint's client made, for workers to inherit by fork.

    Made once in the manager, they cost nothing per worker; made in each worker (SDK imports,
    TLS trust store, type caches) they cost ~100 ms of CPU each, which 64 workers feel at start.
    """
    chat.warm_up()
    _resolve_once()
    return _Clients(spec).make_all()


def check_routes(spec: WorkerSpec) -> None:
    """ConfigError now, in the manager, when the environment's proxy for an endpoint is one no
    client can use (every mode: event loops make their clients only inside the workers)."""
    for endpoint in spec.endpoints:
        route_to(endpoint.base_url)


def _resolve_once() -> None:
    """Run the one step of a first call that the offline warm-up skips: resolving a host.

    The socket module encodes every host name with the "idna" codec, which it imports on first
    use (two modules, and the import system running): done in each worker, that copies ~0.8 MB
    of pages shared with the manager. A numeric address needs no lookup and sends nothing.
    """
    try:
        socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    except OSError:
        pass  # an optimisation only: a host without loopback still runs


def worker_main(conn, spec: WorkerSpec, clients: _Clients | None = None) -> None:
    """Entry point of a worker process: serve tasks from `conn` until told to stop or orphaned.

    `clients` are inherited from the manager when the process was forked (see `preload`).
    """
    serve_signals()
    clients = clients or _Clients(spec)
    if spec.concurrency == 1:
        _Inline(conn, clients, spec).serve()
    else:
        _serve_threads(conn, clients, spec)


def _serve_threads(conn, clients: _Clients, spec: WorkerSpec) -> None:
    """-c K: this thread reads tasks; K threads make the calls."""
    send_lock = threading.Lock()
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threads = [threading.Thread(target=_serve, args=(tasks, conn, send_lock, clients, spec), daemon=True)
               for _ in range(spec.concurrency)]
    for thread in threads:
        thread.start()
    ready(conn)
    try:
        while True:
            task = pickle.loads(conn.recv_bytes())
            if task is None:
                break
            tasks.put(task)
    except (EOFError, OSError):
        pass  # the manager is gone: nothing left to do
    except _Terminated:
        pass  # SIGTERM: take no more tasks; the threads answer those already taken
    for _ in threads:
        tasks.put(None)
    for thread in threads:
        thread.join()


# A worker's first message: an empty list of outcomes, which the pool reads as "ready for tasks".
_READY = pickle.dumps([], protocol=pickle.HIGHEST_PROTOCOL)


def ready(conn) -> None:
    """Tell the manager this worker takes tasks now (see `pool.WorkerPool.wait_ready`)."""
    try:
        conn.send_bytes(_READY)
    except OSError:
        os._exit(0)  # the manager is gone


def serve_signals() -> None:
    """What every worker process does first, in every mode: ignore Ctrl-C, yield the CPU to the
    manager, and exit when the manager dies.

    Ctrl-C reaches the whole terminal process group; the manager decides whether in-flight
    calls may finish, so workers ignore it. SIGTERM (to this worker, or to the whole group, as
    Slurm and systemd send it) ends the worker once the calls it holds are answered; a forked
    worker must not keep the manager's handler, which logs the manager's shutdown message.
    SIGUSR1 (Slurm's time-limit warning, sent to every process of a step) is the manager's alone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _finish_and_exit)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _yield_to_manager()
    _watch_parent(os.getppid())


class _Terminated(Exception):
    """SIGTERM reached this worker: it takes no more tasks, answers those it holds, then exits."""


def _finish_and_exit(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the worker at once
    raise _Terminated


class _Inline:
    """-c 1: the call is made on the thread that reads the pipe (no thread, no queue hand-off:
    less memory per worker, less CPU and latency per row). SIGTERM while waiting for a task ends
    the worker at once; during a call it ends it once that call is answered."""

    def __init__(self, conn, clients: _Clients, spec: WorkerSpec) -> None:
        self.conn, self.clients, self.spec = conn, clients, spec
        self.holding = False    # a task is taken and not yet answered
        self.stopping = False   # SIGTERM came during a call

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        ready(self.conn)
        try:
            while not self.stopping:
                task = pickle.loads(self.conn.recv_bytes())
                if task is None:
                    return
                self.holding = True
                try:
                    _answer(task, self.conn, self.clients, self.spec)
                finally:
                    self.holding = False
        except (EOFError, OSError):
            pass  # the manager is gone: nothing left to do
        except _Terminated:
            pass  # SIGTERM between calls: nothing held

    def _on_sigterm(self, signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the worker at once
        if not self.holding:
            raise _Terminated
        self.stopping = True   # the handler returns: the call goes on, and the loop ends after it


def _serve(tasks, conn, send_lock, clients: _Clients, spec: WorkerSpec) -> None:
    while True:
        task = tasks.get()
        if task is None:
            return
        _answer(task, conn, clients, spec, send_lock)


def _answer(task: Task, conn, clients: _Clients, spec: WorkerSpec, send_lock=contextlib.nullcontext()) -> None:
    """Make the call of `task` and send its outcome (the manager gone: exit at once)."""
    try:
        outcome = execute(task, clients.get(task.endpoint), spec)
    except Exception as err:  # making the client failed (a library surprise): report it, never lose the task
        outcome = surprise(task.tid, err, time.monotonic())
    data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        with send_lock:
            conn.send_bytes(data)
    except (BrokenPipeError, OSError):
        os._exit(0)  # the manager died; the row was never counted, so a rerun redoes it


def _yield_to_manager() -> None:
    """Run this worker (and the threads it starts) under SCHED_BATCH, where a wakeup never preempts.

    Every task the manager sends wakes a worker; on a machine with fewer cores than workers, a
    normal wakeup takes the CPU from the manager mid-dispatch, and the one serial part of the run
    stalls. Batch workers still get their full fair share of CPU, only a little later.
    """
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return  # not Linux: nothing to tune
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError:
        pass  # refused (a container's seccomp profile, say): the run is only a little slower


def _watch_parent(parent: int) -> None:
    """Exit when the manager dies (kill -9 leaves no one to tell us).

    On Linux the kernel kills this worker when the manager does (PR_SET_PDEATHSIG); elsewhere a
    thread watches the parent pid. The kernel's signal follows the thread that forked us, not the
    process, so a worker forked from another thread of the manager is watched by the thread too.
    """
    if _FORKED_BY_MAIN_THREAD[0] and _die_with_parent():
        if os.getppid() != parent:   # the manager died before the kernel was asked
            os._exit(0)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def _libc_prctl():
    """libc's prctl where there is one (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, in the manager: made in a worker, ctypes builds a function type (~50 kB of
# copied pages in each).
_PRCTL = _libc_prctl()


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent thread ends; False where it cannot."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


# Whether the last fork of this process was made by its main thread (set in the parent, read in
# the child: see `_watch_parent`).
_FORKED_BY_MAIN_THREAD = [True]


def _note_forking_thread() -> None:
    _FORKED_BY_MAIN_THREAD[0] = threading.current_thread() is threading.main_thread()


os.register_at_fork(before=_note_forking_thread)
