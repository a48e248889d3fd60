"""The in-flight table and the backlog: the manager's one record of calls on their way."""
from __future__ import annotations

from mpdistill.engine.backlog import Backlog
from mpdistill.engine.flights import Flight, InFlight


def _flight(tid: int, slot: int) -> Flight:
    return Flight(tid, item=f"row{tid}", endpoint="a", reserved=10, slot=slot)


def test_flights_are_found_by_task_and_by_worker():
    """A flight is known by its task id and counted on its worker's slot until it is popped."""
    table = InFlight()
    for tid, slot in ((1, 0), (2, 0), (3, 1)):
        table.add(_flight(tid, slot))
    assert len(table) == 3 and table.load(0) == 2 and table.load(1) == 1 and table.load(7) == 0
    assert [f.tid for f in table.on_slot(0)] == [1, 2]
    assert table.pop(1).item == "row1" and table.pop(1) is None
    assert table.load(0) == 1 and len(table) == 2


def test_a_dead_workers_flights_leave_the_table_together():
    """drop_slot returns every call the dead worker held and leaves the others in flight."""
    table = InFlight()
    for tid, slot in ((1, 0), (2, 1), (3, 1)):
        table.add(_flight(tid, slot))
    assert [f.tid for f in table.drop_slot(1)] == [2, 3]
    assert len(table) == 1 and table.load(1) == 0 and table.pop(2) is None


def test_backlog_releases_retries_when_their_timers_are_due():
    """Ready items go first in order; a delayed item becomes ready only once its time has come."""
    now = [100.0]
    backlog = Backlog(clock=lambda: now[0])
    backlog.schedule("late", 5.0)
    backlog.schedule("now", 0.0)
    assert backlog.waiting == 1 and backlog.next_due() == 105.0
    backlog.release(104.9)
    assert backlog.pop() == "now" and backlog.pop() is None and bool(backlog)
    backlog.release(105.0)
    assert backlog.pop() == "late" and not backlog
