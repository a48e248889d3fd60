"""The asyncio worker (`--mode async`): one event loop, an aiohttp chat client for each endpoint
(`provider.aiochat`), up to `-c` calls in flight, speaking the same pipe protocol as the threaded
worker in `worker.py`.

The manager never sends a worker more than `-c` tasks at once, so the loop needs no semaphore:
every task that arrives is started at once, and its outcome is sent back when it ends. Outcomes
leave through a sender thread (those that ended together in one message): a loop blocked on a
full pipe would stop reading tasks while the manager, blocked on sending them, stops reading
outcomes (a deadlock once -c tasks fill the pipe).
"""
from __future__ import annotations

import asyncio
import os
import pickle
import queue
import signal
import threading
import time
from typing import Any

from ..errors import MpdistillError, to_info
from ..provider.aiochat import AioChatClient, acomplete, aio_client
from .worker import Outcome, Task, WorkerSpec, prepare, ready, serve_signals, since, surprise


async def aexecute(task: Task, api: Any, spec: WorkerSpec) -> Outcome:
    """`worker.execute` for an async chat client: never raises for a call or row problem."""
    if task.hold_s() > 0:
        await asyncio.sleep(task.hold_s())
    start = time.monotonic()
    try:
        request = prepare(task.request, spec, deadline=start + spec.timeout)
        completion = await acomplete(api, request, timeout=spec.timeout - (time.monotonic() - start),
                                     not_before=task.not_before, awake_s=task.awake_s)
        return Outcome(task.tid, completion, None, since(start, task))
    except MpdistillError as err:
        return Outcome(task.tid, None, to_info(err), since(start, task))
    except Exception as err:  # a bug or an SDK surprise: report it, or the task would never come back
        return surprise(task.tid, err, start)


class _AsyncWorker:
    """The loop's state: the pipe, the clients (made lazily, inside the loop) and the running calls."""

    def __init__(self, conn, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.endpoints = {e.name: e for e in spec.endpoints}
        self.clients: dict[str, AioChatClient] = {}
        self.running: set[asyncio.Task] = set()
        self.stopped: asyncio.Future | None = None
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_all, daemon=True)

    def clients_for(self, name: str) -> AioChatClient:
        """The client of endpoint `name`, made on first use (a session belongs to the running loop)."""
        if name not in self.clients:
            self.clients[name] = aio_client(self.endpoints[name], self.spec.concurrency,
                                            self.spec.max_response_bytes)
        return self.clients[name]

    def on_readable(self) -> None:
        """One message from the manager: a task to start, or None (stop after the running calls)."""
        try:
            task = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            task = None   # the manager is gone: nothing left to do
        if task is None:
            self.stop()
            return
        call = asyncio.ensure_future(self.call(task))
        self.running.add(call)
        call.add_done_callback(self.running.discard)

    async def call(self, task: Task) -> None:
        try:
            api = self.clients_for(task.endpoint)
        except Exception as err:  # a client library surprise: report it, or the task would never come back
            outcome = surprise(task.tid, err, time.monotonic())
        else:
            outcome = await aexecute(task, api, self.spec)
        self.outbox.put(outcome)

    def _send_all(self) -> None:
        """The sender thread: outcomes to the manager in the order they ended, those that ended
        together in one message (one pickle, one write, one wake-up of the manager), until None."""
        while True:
            batch = [self.outbox.get()]
            while batch[-1] is not None and not self.outbox.empty():
                batch.append(self.outbox.get())
            done = batch[-1] is None
            outcomes = batch[:-1] if done else batch
            if outcomes:
                self._send(pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL))
            if done:
                return

    def _send(self, data: bytes) -> None:
        try:
            self.conn.send_bytes(data)
        except (BrokenPipeError, OSError):
            os._exit(0)  # the manager died; the row was never counted, so a rerun redoes it

    def stop(self) -> None:
        """Take no more tasks (None from the manager, or SIGTERM); `serve` ends after the running calls."""
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        if not self.stopped.done():
            self.stopped.set_result(None)

    def _make_clients(self) -> None:
        """Every endpoint's clients, before the first task is read: made by the first call instead,
        they hold back the tasks that arrive meanwhile, which then leave as one burst."""
        for name in self.endpoints:
            try:
                self.clients_for(name)
            except Exception:  # the call that needs it reports the error (see `call`)
                pass

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        self.sender.start()
        self._make_clients()
        ready(self.conn)
        loop.add_reader(self.conn.fileno(), self.on_readable)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        await self.stopped
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        self.outbox.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self.sender.join)
        for api in self.clients.values():
            await api.aclose()


def async_worker_main(conn, spec: WorkerSpec, clients=None) -> None:
    """Entry point of an async worker process (same arguments as `worker.worker_main`; no
    inherited clients: async clients belong to the loop that made them)."""
    serve_signals()
    asyncio.run(_AsyncWorker(conn, spec).serve())
