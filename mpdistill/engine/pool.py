"""The process pool: start workers, hand each a task, collect outcomes, notice deaths.

Each worker has its own duplex pipe, multiplexed by one epoll selector (with each worker's
process sentinel, to notice deaths); that pipe set is the result queue. A message from a worker
is one Outcome, or a list of them (an async worker sends what ended together in one message).
The in-flight table (`flights.InFlight`) says which worker holds which task: that is what lets a killed worker's rows
be re-queued at once instead of being lost or waiting for a timeout.
"""
from __future__ import annotations

import gc
import logging
import pickle
import select
import selectors
import time

import multiprocess as mp

from . import modes
from .flights import Flight, InFlight
from .forked import ForkedProcess
from .worker import Outcome, Task, WorkerSpec, check_routes, preload

log = logging.getLogger(__name__)


def _freeze_heap() -> None:
    """Before a fork: every object the manager has now, out of its GC's reach for the rest of the run.

    A collection writes to the header of every object it examines. In a worker that would copy
    every page it shares with the manager; in the manager, after the fork, it copies them as
    well (the workers keep the old pages, the manager makes new ones): ~10 MB at -p 64. Frozen
    objects are still freed by their refcounts; only a cycle of them that becomes garbage
    during the run waits for `WorkerPool.kill`, which gives them back to the GC.
    """
    gc.freeze()


class _Worker:
    def __init__(self, ctx, slot: int, spec: WorkerSpec, clients=None) -> None:
        self.slot = slot
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = _process(ctx, modes.entry(spec.mode), (child, spec, clients), f"mpdistill-worker-{slot}")
        _freeze_heap()
        self.process.start()
        child.close()
        self._poller = select.poll()   # "anything more to read?" without building a selector
        self._poller.register(self.conn, select.POLLIN)

    def readable(self) -> bool:
        """True when the pipe has bytes (or EOF) to read now."""
        return bool(self._poller.poll(0))

    def release(self) -> None:
        """Close the pipe, and the process's sentinel once it has exited."""
        self.conn.close()
        if not self.process.is_alive():
            self.process.close()


def _process(ctx, target, args: tuple, name: str):
    """A bare fork where the platform forks (see `forked`: less copied memory per worker), else
    the context's own process (spawn)."""
    if ctx.get_start_method() == "fork":
        return ForkedProcess(target, args, name)
    return ctx.Process(target=target, args=args, daemon=True, name=name)


class WorkerPool:
    """P worker processes with K requests in flight each."""

    def __init__(self, spec: WorkerSpec, processes: int, flights: InFlight | None = None) -> None:
        shape = modes.shape(spec.mode, processes, spec.concurrency)
        for hint in shape.hints:
            log.warning("hint: %s", hint)
        self.spec = spec
        self.processes = shape.processes
        self.flights = InFlight() if flights is None else flights
        self._ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self._workers: list[_Worker] = []
        self._next = 0
        self._clients = None   # SDK clients made once here, inherited by forked workers
        # One selector for the whole run: building one per wait() costs O(processes) per loop.
        self._selector = selectors.DefaultSelector()

    def start(self) -> None:
        """Make the SDK clients workers inherit, and the first worker. The others are forked as
        the load needs them (see `_pick`): the first request leaves after one fork, not 64."""
        check_routes(self.spec)
        if self._ctx.get_start_method() == "fork" and modes.inherits_clients(self.spec.mode):
            self._clients = preload(self.spec)
        self._grow()

    def _grow(self) -> _Worker:
        """Fork as many workers as there are (up to `processes`), back to back; the first of them.

        Workers forked together share every page as the manager had it then; a page the manager
        changes between two forks is kept, as it was, by each worker forked before (~1-2 MB a
        worker when 64 are forked one by one as the load grows). Doubling: 7 bursts for 64.
        """
        burst = max(1, min(len(self._workers), self.processes - len(self._workers)))
        for _ in range(burst):
            self._workers.append(self._watch(_Worker(self._ctx, len(self._workers), self.spec, self._clients)))
        return self._workers[-burst]

    def _watch(self, worker: _Worker) -> _Worker:
        self._selector.register(worker.conn, selectors.EVENT_READ, worker)
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, worker)
        return worker

    def _unwatch(self, worker: _Worker) -> None:
        for handle in (worker.conn, worker.process.sentinel):
            try:
                self._selector.unregister(handle)
            except (KeyError, ValueError):
                pass  # never registered, or its fd is already closed

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the first worker's first message (it is ready for tasks, or it
        died); the message itself is read by `wait` as usual (an empty list of outcomes)."""
        return bool(self._workers) and bool(self._workers[0]._poller.poll(max(0, int(timeout * 1000))))

    @property
    def started(self) -> int:
        """Workers started so far (the pool grows on demand, up to `processes`)."""
        return len(self._workers)

    @property
    def capacity(self) -> int:
        return self.processes * self.spec.concurrency

    @property
    def in_flight(self) -> int:
        return len(self.flights)

    def free_slots(self) -> int:
        return self.capacity - len(self.flights)

    def submit(self, task: Task, flight: Flight) -> int:
        """Send `task` to the least busy worker (starting the pool on first use) and enter its
        `flight` in the table under that worker; returns the slot."""
        if not self._workers:
            self.start()
        worker = self._pick()
        flight.slot = worker.slot
        self.flights.add(flight)
        try:
            worker.conn.send_bytes(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the worker just died: `wait` sees its sentinel and re-queues this flight with its others
        return worker.slot

    def _pick(self) -> _Worker:
        n = len(self._workers)
        best = None
        load = self.flights.load
        for i in range(n):  # round robin start, so equal loads spread evenly
            worker = self._workers[(self._next + i) % n]
            held = load(worker.slot)
            if not held:
                best = worker
                break
            if held < self.spec.concurrency and (best is None or held < load(best.slot)):
                best = worker
        if (best is None or load(best.slot)) and n < self.processes:
            return self._grow()   # every worker is busy and the pool may grow: a fresh one is least busy
        if best is None:
            raise RuntimeError("submit() called with no free slot")
        self._next = (best.slot + 1) % n
        return best

    def wait(self, timeout: float) -> tuple[list[tuple[Outcome, Flight]], list[Flight]]:
        """Outcomes that arrived within `timeout` with their flights (now out of the table), and
        the flights lost with dead workers."""
        ready = self._selector.select(max(0.0, timeout))
        outcomes: list[tuple[Outcome, Flight]] = []
        lost: list[Flight] = []
        for key, _ in ready:
            if key.fileobj is key.data.conn:
                outcomes.extend(self._drain(key.data, ready=True))
        for key, _ in ready:
            worker = key.data
            if key.fileobj is not worker.conn and not worker.process.is_alive():
                outcomes.extend(self._drain(worker))
                lost.extend(self._replace(worker))
        return outcomes, lost

    def _drain(self, worker: _Worker, ready: bool = False) -> list[tuple[Outcome, Flight]]:
        """Every message waiting on `worker`'s pipe (`ready`: the selector just saw one, so the
        first read needs no poll: a -c 1 worker's pipe is polled once per message, not twice)."""
        out = []
        try:
            while ready or worker.readable():
                ready = False
                message = pickle.loads(worker.conn.recv_bytes())
                for outcome in message if isinstance(message, list) else (message,):
                    flight = self.flights.pop(outcome.tid)
                    if flight is not None:  # else: a task already given up (stop --now)
                        out.append((outcome, flight))
        except (EOFError, OSError):
            pass  # the worker died mid-send; its tasks are handled as lost
        return out

    def _replace(self, worker: _Worker) -> list[Flight]:
        lost = self.flights.drop_slot(worker.slot)
        if lost or worker.process.exitcode != 0:
            log.warning("worker %d (pid %s) died with exit code %s; re-queuing %d request(s)",
                        worker.slot, worker.process.pid, worker.process.exitcode, len(lost))
        else:  # SIGTERM: it answered what it held and left
            log.info("worker %d (pid %s) exited; starting another", worker.slot, worker.process.pid)
        self._unwatch(worker)
        worker.release()
        self._workers[worker.slot] = self._watch(_Worker(self._ctx, worker.slot, self.spec, self._clients))
        return lost

    def pids(self) -> list[tuple[int, int | None]]:
        """(slot, pid) of every worker, for the status file."""
        return [(w.slot, w.process.pid) for w in self._workers]

    def close(self, grace: float = 0.0) -> None:
        """Ask workers to stop after their current calls; kill those still alive after `grace` s."""
        for worker in self._workers:
            try:
                worker.conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """Kill every worker now, in-flight calls included (their rows are redone by the next run)."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in self._workers:
            worker.process.join(5)
            self._unwatch(worker)
            worker.release()
        self._workers = []
        self.flights.clear()
        gc.unfreeze()   # no more forks: the manager's GC may collect everything again
