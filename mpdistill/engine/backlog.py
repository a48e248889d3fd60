"""Items waiting to be sent: ready now, or waiting out a retry backoff on a timer heap."""
from __future__ import annotations

import heapq
import itertools
import time
from collections import deque

from .job import Item


class Backlog:
    """The manager's queue of items not in flight: a ready deque and a heap of retry timers."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.ready: deque[Item] = deque()
        self._timers: list = []          # (due, seq, item)
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self.ready) or bool(self._timers)

    @property
    def waiting(self) -> int:
        """Items waiting out a backoff."""
        return len(self._timers)

    def schedule(self, item: Item, delay: float) -> None:
        """Make `item` ready now (delay <= 0) or after `delay` seconds."""
        if delay <= 0:
            self.ready.append(item)
        else:
            heapq.heappush(self._timers, (self._clock() + delay, next(self._seq), item))

    def release(self, now: float) -> None:
        """Move every item whose timer is due to the ready queue."""
        while self._timers and self._timers[0][0] <= now:
            self.ready.append(heapq.heappop(self._timers)[2])

    def next_due(self) -> float | None:
        """When the next timer fires; None when none waits."""
        return self._timers[0][0] if self._timers else None

    def pop(self) -> Item | None:
        return self.ready.popleft() if self.ready else None

    def push_front(self, item: Item) -> None:
        """Put back an item that could not be sent (no endpoint ready)."""
        self.ready.appendleft(item)
