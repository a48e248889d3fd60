"""Recent figures of each run, sampled about once a second, for the dashboard's live chart."""
from __future__ import annotations

import time
from collections import deque

POINTS = 600   # ten minutes at one sample a second


def totals(status: dict) -> tuple[int, int]:
    """429s and other errors so far over every endpoint of a status."""
    endpoints = status.get("endpoints") or []
    return (sum(int(e.get("rate_limited") or 0) for e in endpoints),
            sum(int(e.get("errors") or 0) for e in endpoints))


class History:
    """Per run: (time, done, rows/s, 429s/s, errors/s) points, the last `POINTS` of them."""

    def __init__(self, points: int = POINTS, clock=time.time) -> None:
        self._points: dict[str, deque] = {}
        self._last: dict[str, tuple[float, int, int, int]] = {}
        self._size = points
        self._clock = clock

    def record(self, run_id: str, status: dict | None) -> None:
        if not status:
            return
        now = self._clock()
        limited, errors = totals(status)
        done = int(status.get("done") or 0)
        before = self._last.get(run_id)
        self._last[run_id] = (now, limited, errors, done)
        if before is None:
            return
        dt = max(now - before[0], 1e-6)
        rate = lambda new, old: round(max(new - old, 0) / dt, 3)
        series = self._points.setdefault(run_id, deque(maxlen=self._size))
        series.append((round(now, 3), done, rate(done, before[3]), rate(limited, before[1]), rate(errors, before[2])))

    def points(self, run_id: str) -> list:
        return list(self._points.get(run_id, ()))

    def forget_except(self, run_ids) -> None:
        keep = set(run_ids)
        for rid in [r for r in self._points if r not in keep]:
            self._points.pop(rid, None)
            self._last.pop(rid, None)
