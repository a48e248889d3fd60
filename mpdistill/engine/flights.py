"""The in-flight table: every call on its way, by task id, with its row, endpoint and worker slot.

The one owner of "which rows are in flight, where": the manager adds a flight when it sends a
task, the pool removes it when the outcome arrives (or its worker dies) and places tasks by the
flights each slot holds; status views read it. Manager-private: one thread, no lock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Flight:
    """One call in flight: the item it serves, where it went and what it reserved."""

    tid: int
    item: Any                 # the runner's Item (row, job, attempts)
    endpoint: str
    reserved: int             # tokens reserved on the endpoint
    slot: int = -1            # the worker that holds it
    sent_at: float = field(default_factory=time.time)


class InFlight:
    """Flights by task id, indexed by worker slot."""

    def __init__(self) -> None:
        self._by_tid: dict[int, Flight] = {}
        self._by_slot: dict[int, dict[int, Flight]] = {}

    def __len__(self) -> int:
        return len(self._by_tid)

    def __bool__(self) -> bool:
        return bool(self._by_tid)

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self._by_tid.values()))

    def add(self, flight: Flight) -> None:
        """Record `flight` as held by its slot."""
        self._by_tid[flight.tid] = flight
        self._by_slot.setdefault(flight.slot, {})[flight.tid] = flight

    def pop(self, tid: int) -> Flight | None:
        """Remove and return the flight of `tid`; None if it is no longer in flight."""
        flight = self._by_tid.pop(tid, None)
        if flight is not None:
            held = self._by_slot.get(flight.slot)
            if held is not None:
                held.pop(tid, None)
        return flight

    def on_slot(self, slot: int) -> list[Flight]:
        """The flights worker `slot` holds, oldest first."""
        return sorted(self._by_slot.get(slot, {}).values(), key=lambda f: f.tid)

    def load(self, slot: int) -> int:
        """How many calls worker `slot` holds."""
        return len(self._by_slot.get(slot, ()))

    def drop_slot(self, slot: int) -> list[Flight]:
        """Remove every flight of worker `slot` (it died, or the pool was killed); returns them."""
        lost = self.on_slot(slot)
        for flight in lost:
            self._by_tid.pop(flight.tid, None)
        self._by_slot.pop(slot, None)
        return lost

    def clear(self) -> None:
        self._by_tid.clear()
        self._by_slot.clear()
