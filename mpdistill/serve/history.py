"""Recent figures of each run, sampled about once a second, for the dashboard's live chart."""
from __future__ import annotations

import time
from collections import deque

POINTS = 600      # ten minutes at one sample a second
WINDOW_S = 5.0    # rates are taken over the last few seconds: durable rows arrive in bursts


def totals(status: dict) -> tuple[int, int, int]:
    """Rows done, 429s and other errors so far (over every endpoint) of a status."""
    endpoints = status.get("endpoints") or []
    return (int(status.get("done") or 0), sum(int(e.get("rate_limited") or 0) for e in endpoints),
            sum(int(e.get("errors") or 0) for e in endpoints))


class History:
    """Per run: (time, done, rows/s, 429s/s, errors/s) points, the last `POINTS` of them."""

    def __init__(self, points: int = POINTS, clock=time.time) -> None:
        self._points: dict[str, deque] = {}
        self._raw: dict[str, deque] = {}
        self._size = points
        self._clock = clock

    def record(self, run_id: str, status: dict | None) -> None:
        if not status:
            return
        now = self._clock()
        raw = self._raw.setdefault(run_id, deque())
        raw.append((now, *totals(status)))
        while len(raw) > 2 and raw[1][0] <= now - WINDOW_S:
            raw.popleft()
        if len(raw) < 2:
            return
        (t0, *before), (_, done, *after) = raw[0], raw[-1]
        dt = max(now - t0, 1e-6)
        rates = [round(max(new - old, 0) / dt, 3) for new, old in zip((done, *after), before)]
        self._points.setdefault(run_id, deque(maxlen=self._size)).append((round(now, 3), done, *rates))

    def points(self, run_id: str) -> list:
        return list(self._points.get(run_id, ()))

    def forget_except(self, run_ids) -> None:
        keep = set(run_ids)
        for rid in [r for r in self._raw if r not in keep]:
            self._points.pop(rid, None)
            self._raw.pop(rid, None)
