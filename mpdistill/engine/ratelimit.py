"""Rate primitives: a token bucket (the key pool's budget interface) and the one sliding-minute
event meter (the key pool's request rates, the run's durable rows per second)."""
from __future__ import annotations

import itertools
import math
from collections import deque

BURST_S = 1.0            # a bucket holds this many seconds of its rate (see keypool for why)
MIN_SPAN_S = 0.02        # shortest span a rate is measured over (the first events of a run)
RECENT_S = 1.0           # the meter keeps the last second exactly
_EPS = 1e-9


class Bucket:
    """Continuous token bucket; it may go into debt, so an oversized request fits when it is full.

    This is the budget interface of the key pool: `wait`, `give` (negative: take), `hold`,
    `set_rate`, `pace`, `fraction`. A bucket holds `burst_s` seconds of its rate; `pace()` shrinks
    it to one token, so requests leave evenly spaced, one interval after the previous one, and lets
    each be taken up to `lead_s` before its token is there (the caller holds it until its slot).
    """

    def __init__(self, per_minute: float, now: float, *, full: bool = True, burst_s: float = BURST_S) -> None:
        self.rate = per_minute / 60.0
        self.burst_s = burst_s
        self.lead_s: float | None = None    # paced: a token may be taken this long before it is there
        self.lead_max = 0.0                 # ... and at most this many tokens before
        self.capacity = self._capacity()
        self.tokens = self.capacity if full else 1.0
        self.stamp = now

    def _capacity(self) -> float:
        return 1.0 if self.lead_s is not None else max(1.0, self.rate * self.burst_s)

    @property
    def paced(self) -> bool:
        return self.lead_s is not None

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def set_rate(self, per_minute: float, now: float) -> None:
        self.refill(now)
        self.rate = per_minute / 60.0
        self.capacity = self._capacity()
        self.tokens = min(self.tokens, self.capacity)

    def pace(self, lead_s: float = 0.0, lead_max: float = 0.0) -> None:
        """Hold one token from now on: no burst, requests evenly spaced, each of them taken up to
        `lead_s` (and `lead_max` tokens) before its time."""
        self.lead_s, self.lead_max = lead_s, lead_max
        self.capacity = self._capacity()
        self.tokens = min(self.tokens, 1.0)

    def restart(self, now: float) -> None:
        """Refill from `now` with one token: what accrued before (a pool starting) never leaves as a burst."""
        self.tokens = min(self.tokens, 1.0)
        self.stamp = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` may be taken; 0.0 when it may be taken now."""
        self.refill(now)
        short = min(amount, self.capacity) - self.tokens - self.ahead()
        return 0.0 if short <= _EPS else max(0.0, self.stamp - now) + short / self.rate

    def ahead(self) -> float:
        """Tokens that may be taken before they are there (paced only)."""
        return min(self.rate * self.lead_s, self.lead_max) if self.lead_s else 0.0

    def give(self, amount: float) -> None:
        """Add (or, when negative, take) tokens."""
        self.tokens = min(self.capacity, self.tokens + amount)

    def fraction(self) -> float:
        return max(0.0, self.tokens / self.capacity)

    def hold(self, until: float) -> None:
        """Keep one token for `until` and refill only from then on, so a cooldown does not end in a burst."""
        self.refill(until)
        self.tokens = min(self.tokens, 1.0)
        self.stamp = max(self.stamp, until)


class Meter:
    """Events of the last minute in one-second bins: an observed rate without a timestamp per event.

    The last RECENT_S seconds are also kept exactly: the rate just before a 429, which the minute's
    average understates after a slow start (workers still starting, a cooldown).
    """

    def __init__(self, start: float | None = None) -> None:
        self._bins: deque[list] = deque()
        self._start: float | None = start   # given: rates are measured from then, not the first event
        self._recent: deque[float] = deque()

    def add(self, now: float, n: int = 1) -> None:
        """Count `n` events at time `now`."""
        if n <= 0:
            return
        self._recent.extend(itertools.repeat(now, n))
        self._trim(now)
        second = math.floor(now)
        if self._start is None:
            self._start = now
        if self._bins and self._bins[-1][0] == second:
            self._bins[-1][1] += n
        else:
            self._bins.append([second, n])

    @property
    def start(self) -> float | None:
        """Time rates are measured from: the given start, else the first event; None before it."""
        return self._start

    def recent_rpm(self, now: float, since: float) -> float:
        """Rate of the last RECENT_S seconds, or of the span since `since` when that is shorter."""
        self._trim(now)
        count = sum(1 for t in self._recent if t >= since) if self._recent and self._recent[0] < since \
            else len(self._recent)
        return count * 60.0 / min(RECENT_S, max(MIN_SPAN_S, now - since))

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - RECENT_S:
            self._recent.popleft()

    def rpm(self, now: float) -> float:
        while self._bins and self._bins[0][0] <= now - 61:
            self._bins.popleft()
        if self._start is None:
            return 0.0
        span = min(60.0, max(MIN_SPAN_S, now - self._start))  # the real span: a run's first second too
        return sum(count for _, count in self._bins) * 60.0 / span
