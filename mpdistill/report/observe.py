"""The observer interface the manager calls for every request outcome and every status tick.

Metrics, traces and per-endpoint logs are observers; the manager knows only `Observers`, a fan-out
that keeps one failing observer from stopping the run. `RequestCounters` is the observer whose
figures (requests by endpoint and status class, 429s, latency buckets, rpm now) go into the status
file, so the dashboard and `/metrics` read them from files like every other live figure.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

log = logging.getLogger(__name__)

# Prometheus-style latency bucket upper bounds (seconds); +Inf is implied.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RPM_WINDOW_S = 60.0


@dataclass(frozen=True)
class RequestEvent:
    """One finished API call (one attempt of one row), as the manager saw it. Never holds a key."""

    run: str
    model: str
    endpoint: str            # the endpoint's name
    row_id: str
    line: int
    attempt: int             # 1 for the first call of the row
    status: int | None       # HTTP status; None when no response came (timeout, connection, worker died)
    error: str | None        # the error class name; None on success
    latency_s: float
    ended_at: float          # wall clock
    usage: Mapping[str, Any] | None = None
    request: Mapping[str, Any] | None = None   # what was sent: only --trace-content may export it
    answer: str | None = None
    job: str | None = None   # the job's alias (its output), when a run has several models

    @property
    def status_class(self) -> str:
        """`2xx`, `4xx`, `5xx` … or `none` when no HTTP response came back."""
        if self.status is None:
            return "none" if self.error else "2xx"
        return f"{self.status // 100}xx"

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


class Observer(Protocol):
    """What the manager tells an observer; each method must return quickly and never raise on purpose."""

    def request(self, event: RequestEvent) -> None: ...

    def status(self, status: dict) -> None: ...

    def close(self) -> None: ...


class Observers:
    """Fan-out to every observer; one that raises is logged once and dropped, the run goes on."""

    def __init__(self, observers=()) -> None:
        self._observers = list(observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def add(self, observer) -> None:
        self._observers.append(observer)

    def request(self, event: RequestEvent) -> None:
        self._each("request", event)

    def status(self, status: dict) -> None:
        self._each("status", status)

    def status_fields(self) -> dict:
        """Extra status-file fields the observers contribute (the request counters)."""
        fields: dict = {}
        for observer in self._observers:
            if hasattr(observer, "status_fields"):
                fields.update(observer.status_fields())
        return fields

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, method)(*args)
            except Exception:  # an observer's bug or an exporter's fault must not stop the run
                log.exception("observer %s failed in %s; it is switched off for this run",
                              type(observer).__name__, method)
                self._observers.remove(observer)


class _EndpointCounts:
    """Counters of one endpoint."""

    def __init__(self) -> None:
        self.by_class: dict[str, int] = {}
        self.rate_limited = 0
        self.last_429_at: float | None = None
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.recent: deque[float] = deque()   # monotonic times of the last minute's requests

    def add(self, event: RequestEvent, now: float) -> None:
        cls = event.status_class
        self.by_class[cls] = self.by_class.get(cls, 0) + 1
        if event.rate_limited:
            self.rate_limited += 1
            self.last_429_at = event.ended_at
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, event.latency_s)] += 1
        self.latency_sum += event.latency_s
        self.recent.append(now)

    def rpm(self, now: float) -> float:
        while self.recent and self.recent[0] < now - RPM_WINDOW_S:
            self.recent.popleft()
        return float(len(self.recent))

    def snapshot(self, now: float) -> dict:
        return {"by_class": dict(self.by_class), "rate_limited": self.rate_limited,
                "last_429_at": self.last_429_at, "rpm_now": self.rpm(now),
                "latency_buckets": list(self.buckets), "latency_sum_s": round(self.latency_sum, 6)}


class RequestCounters:
    """Per-endpoint request figures of this run, written into the status file as `requests`."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._endpoints: dict[str, _EndpointCounts] = {}

    def request(self, event: RequestEvent) -> None:
        counts = self._endpoints.get(event.endpoint)
        if counts is None:
            counts = self._endpoints[event.endpoint] = _EndpointCounts()
        counts.add(event, self._clock())

    def status(self, status: dict) -> None:
        """Counters need nothing from the status."""

    def close(self) -> None:
        """Nothing to release."""

    def status_fields(self) -> dict:
        now = self._clock()
        return {"requests": {"latency_buckets_s": list(LATENCY_BUCKETS),
                             "endpoints": {name: c.snapshot(now) for name, c in self._endpoints.items()}}}
