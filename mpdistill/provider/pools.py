"""Several httpx clients for one endpoint of a threaded worker, so no connection pool grows past
POOL_CONNECTIONS.

httpcore's connection pool walks every one of its connections each time a request starts or
ends, so the cost of one request grows with the pool: at 1,024 connections in one pool that walk
costs more CPU than the rest of the call (an event loop on httpx, meant to hold 1,024 requests in
flight, topped out at a fifth of that), and even at 64 connections the walk is a fifth of the call.
Split over clients of at most POOL_CONNECTIONS connections each, with every call on the least busy
one, the walk stays short at any `-c`. (aiohttp's pool, which event loops use, has no such walk.)
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterator

POOL_CONNECTIONS = 16   # measured: 0.7 against 0.9 ms of CPU a call at 64, 256 calls in flight in one loop


def pool_sizes(concurrency: int) -> list[int]:
    """The connection pool size of each client that together carry `concurrency` calls."""
    count = max(1, math.ceil(concurrency / POOL_CONNECTIONS))
    return [math.ceil(concurrency / count)] * count


class ClientSet:
    """The clients of one endpoint; `lease()` lends the least busy for one call (thread-safe)."""

    def __init__(self, make: Callable[[int], Any], concurrency: int) -> None:
        self.clients = [make(size) for size in pool_sizes(concurrency)]
        self._busy = [0] * len(self.clients)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[Any]:
        with self._lock:
            i = min(range(len(self._busy)), key=self._busy.__getitem__)
            self._busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            with self._lock:
                self._busy[i] -= 1
