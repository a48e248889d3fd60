"""Execution modes: how worker processes make their calls; the manager and every guarantee are the same in all.

- `process` (default): P worker processes, each with K threads (one blocking call per thread).
- `thread`: one worker process with K threads, for small jobs or where forking many processes is unwelcome.
- `async`: P worker processes, each an asyncio loop with up to K calls in flight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODES = ("process", "thread", "async")
THREADS_FOR_ASYNC = 256   # past this many threads in one process, an event loop is cheaper
MIN_ASYNC_CALLS = 8       # an event loop with fewer calls than this is a process-mode worker with extra steps


@dataclass(frozen=True)
class Shape:
    """The pool a mode makes of `-p` and `-c`, with hints for a combination that gains nothing."""

    processes: int
    concurrency: int
    hints: tuple[str, ...] = ()

    @property
    def in_flight(self) -> int:
        return self.processes * self.concurrency


def shape(mode: str, processes: int, concurrency: int) -> Shape:
    """Worker processes and calls per process for `mode`; never refuses a combination, only hints."""
    if mode == "thread":
        hints = []
        if processes > 1:
            hints.append(f"--mode thread runs one worker process with -c {concurrency} thread(s); "
                         f"-p {processes} is not used (raise -c for more requests in flight)")
        if concurrency > THREADS_FOR_ASYNC:
            hints.append(f"--mode thread with -c {concurrency}: a thread per request is costly past "
                         f"{THREADS_FOR_ASYNC}; --mode async -p 2 -c {max(1, concurrency // 2)} holds as many")
        return Shape(1, concurrency, tuple(hints))
    if mode == "async" and concurrency < MIN_ASYNC_CALLS:
        return Shape(processes, concurrency, (
            f"--mode async with -c {concurrency} keeps only {concurrency} request(s) in flight per process, "
            f"no more than --mode process; give it many, e.g. -p 2 -c 1024",))
    if mode == "process" and concurrency > THREADS_FOR_ASYNC:
        return Shape(processes, concurrency, (
            f"-c {concurrency} threads per process is costly; --mode async holds that many requests "
            f"in flight on an event loop",))
    return Shape(processes, concurrency)


def entry(mode: str) -> Callable:
    """The function a worker process of `mode` runs: `(conn, spec, clients)`, one pipe protocol for all."""
    if mode == "async":
        from .aio import async_worker_main
        return async_worker_main
    from .worker import worker_main
    return worker_main


def inherits_clients(mode: str) -> bool:
    """Whether workers of `mode` can use SDK clients made in the manager before the fork (sync ones)."""
    return mode != "async"
