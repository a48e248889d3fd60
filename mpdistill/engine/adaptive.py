"""The adaptive request rate of one endpoint (AIMD): cut on a 429, probe back up, pace evenly.

Owned by the key pool (manager process, one thread); time comes in as `now`. The rate is a
`Bucket` the pool reserves from: until a 429 it holds BURST_S of the configured rate (a manager
loop waking every few tens of milliseconds can spend the whole rate); from the first 429 on it
holds one request, so requests leave evenly spaced, which is the only pattern a strict limiter
(nginx `limit_req` without `burst`) admits at its full rate.
"""
from __future__ import annotations

import logging
import math
from collections import deque

from .ratelimit import RECENT_S, Bucket, Meter

logger = logging.getLogger(__name__)

MIN_RPM = 1.0            # AIMD floor
DECREASE = 0.7           # the deepest cut one 429 makes when the admitted rate is known
# Before a second of traffic says what the server admits (a run's first 429s), halve: one step ×0.7 at a time
# from a limit set 3× too high takes four 429s to get under it, halving takes two.
BLIND_DECREASE = 0.5
# A 429 far from the last failing rate cuts to just under the rate the server admitted (2xx) in the last
# second: one cut reaches a bursty limiter's limit, where ×0.7 steps overshoot below it. A strict limiter
# admits only a fraction of an uneven or too fast stream, so the cut never goes below ×DECREASE.
ADMITTED_MARGIN = 0.97
# A 429 while probing near the last failing rate means the limit is just below: a small cut is enough.
GENTLE = 0.97
# Growth is stated per second of busy traffic and paid per success (a busy endpoint has rpm/60 successes a
# second): fast (+25 %/s) while below 95 % of the last rate that drew a 429, then probing that starts slow
# (+0.15 % of that rate per second) and doubles every PROBE_DOUBLING_S without a 429, so the rate sits just
# under a steady limit (a few 429s every several seconds) yet finds a limit that rose within ~15 s.
FAST_GROWTH = 0.25
SLOW_GROWTH = 0.0015
PROBE_DOUBLING_S = 3.0
NEAR_LOW, NEAR_HIGH = 0.95, 1.1   # above NEAR_HIGH × the last failing rate, the limit has moved: grow fast
# Paced requests are booked on one schedule (one interval apart) and handed to workers up to PACE_LEAD_S
# before their slot, each worker holding its request until then: the manager's loop, the pipe and the
# worker's wake-up then change when a task reaches its worker, not when its request reaches the server,
# which is what a strict limiter judges (it rejects a request that comes less than 1/R after the last one).
# At a high rate the lead is capped at PACE_LEAD_MAX requests: requests handed out ahead leave at the old
# rate after a cut, so a long lead turns into 429s.
PACE_LEAD_S = 0.025
PACE_LEAD_MAX = 1.0
# The rate paced requests drew a 429 at is the spacing of the last few slots sent: a second's average
# lags the fast growth before it (a ramp from 15 to 20 r/s averages 17.5), and a limit learnt that low
# would be probed back up slowly, for most of a run.
PACE_SAMPLE = 4
# The worker spends the last AWAKE_SHARE of a paced request's interval (at most AWAKE_MAX_S) before its
# slot awake, not asleep: a process woken on a busy machine runs up to ~2 ms late, which at 20 r/s
# (50 ms apart) is a 429 at 0.96 R. Spinning costs at most AWAKE_SHARE of one core, whatever the rate.
AWAKE_SHARE = 0.05
AWAKE_MAX_S = 0.0015


class AdaptiveRate:
    """Requests per minute of one endpoint: configured, cut by 429s and probed back up."""

    def __init__(self, configured_rpm: float | None, now: float, lead_s: float = PACE_LEAD_S) -> None:
        self.configured = configured_rpm
        self.lead_s = lead_s      # paced requests are handed out this long before their slot
        self.current = configured_rpm                 # None: unlimited until a 429 teaches a limit
        self.bucket = Bucket(configured_rpm, now, full=False) if configured_rpm is not None else None
        self.sent = Meter()
        self.oks = Meter()
        self.w_max: float | None = None               # the rpm that last drew a 429
        self.cut_at = -math.inf                       # when the last cut was made
        self.cut_pending = 0     # calls sent before the last cut still to end: their 429s are old news
        self.ok_since_cut = True  # a 2xx came after the last cut: the endpoint still admits some
        self.last_slot = -math.inf  # paced: the slot of the last request handed out
        self.slots: deque[float] = deque(maxlen=2 * PACE_SAMPLE)   # paced: the last slots handed out

    def take(self, now: float) -> float:
        """One request is handed out now; returns when it should leave: its slot of the paced schedule
        (about `lead_s` ahead), or now when the rate is not paced."""
        self.sent.add(now)
        if self.bucket is None:
            return now
        self.bucket.give(-1)
        if not self.bucket.paced:
            return now
        # One interval after the last slot at today's rate, and never sooner than `lead_s` from now:
        # a task that reaches its worker late (a busy machine) still finds its slot ahead.
        interval = 60.0 / self.current
        self.last_slot = max(now + min(self.lead_s, PACE_LEAD_MAX * interval), self.last_slot + interval)
        self.slots.append(self.last_slot)
        return self.last_slot

    def awake_s(self) -> float:
        """How long before its slot the worker of a paced request stays awake (0.0: not paced)."""
        if self.bucket is None or not self.bucket.paced:
            return 0.0
        return min(AWAKE_MAX_S, AWAKE_SHARE * 60.0 / self.current)

    def paced_rpm(self, now: float) -> float | None:
        """The rate of the last PACE_SAMPLE paced slots already past (None: too few of them in the last
        second): what a strict limiter saw just before now."""
        past = [slot for slot in self.slots if now - RECENT_S <= slot <= now][-PACE_SAMPLE:]
        if len(past) < 2 or past[-1] <= past[0]:
            return None
        return (len(past) - 1) * 60.0 / (past[-1] - past[0])

    def begin(self, now: float) -> None:
        """Traffic starts now: what the bucket saved before (the pool starting) never leaves as a burst."""
        if self.bucket is not None:
            self.bucket.restart(now)

    def wait(self, now: float) -> float:
        """Seconds until the next request may leave."""
        return 0.0 if self.bucket is None else self.bucket.wait(1, now)

    def ended(self) -> bool:
        """A call ended; True when it was sent before the last cut (its 429 is old news)."""
        old = self.cut_pending > 0
        self.cut_pending = max(0, self.cut_pending - 1)
        return old

    # -- a 429 ----------------------------------------------------------------------------------

    def cut(self, now: float, since: float, in_flight: int, name: str) -> None:
        """Cut once per burst of 429s; `since` is when the traffic measured for the cut began."""
        sent = max(MIN_RPM, self.sent.rpm(now), self.sent.recent_rpm(now, since))  # the minute lags a ramp
        # Over less than a second the server's burst allowance inflates the admitted rate: halve then.
        measured = now - since >= RECENT_S
        # What drew the 429: the rate sent (it may be below the bucket's rate; paced, the spacing of the
        # last slots), but before a second of traffic (a pool still starting, whose average says little
        # of how close together its requests left) at least half the rate they were let out at.
        paced = self.paced_rpm(now)
        before = sent if self.current is None else min(self.current, sent if paced is None else paced)
        if not measured and self.current is not None:
            before = max(before, self.current * BLIND_DECREASE)
        admitted = self.oks.recent_rpm(now, since) if measured else 0.0
        near = (self.w_max is not None and self.current is not None and sent >= 0.9 * self.current
                and NEAR_LOW * self.w_max <= self.current <= NEAR_HIGH * self.w_max)
        if near:
            before = self.current
            rpm = before * GENTLE
        elif measured:
            rpm = min(before, max(before * DECREASE, admitted * ADMITTED_MARGIN))
        else:
            rpm = before * BLIND_DECREASE
        self.w_max = before
        self.cut_at = now
        self._set(max(MIN_RPM, rpm), now)
        if self.bucket is not None:
            self.bucket.pace(self.lead_s, PACE_LEAD_MAX)   # from now on: evenly spaced requests
        self.cut_pending, self.ok_since_cut = in_flight, False
        logger.info("endpoint %s: 429, rate %.1f -> %.1f rpm (admitted %.1f%s)",
                    name, before, self.current, admitted, ", near the last limit" if near else "")

    # -- a success ------------------------------------------------------------------------------

    def ok(self, now: float) -> None:
        """A 2xx: additive increase, never above the configured rpm (or 2× the observed ok rate)."""
        self.oks.add(now)
        self.ok_since_cut = True
        current = self.current
        if current is None:
            return
        cap = self.configured if self.configured is not None else max(MIN_RPM, 2 * self.oks.rpm(now))
        if current >= cap:
            return
        if self.w_max is not None and current > NEAR_HIGH * self.w_max:
            self.w_max = None
        if self.w_max is None:
            target = current + FAST_GROWTH * 60.0
        elif current < NEAR_LOW * self.w_max:  # fast, but not past the band where probing is slow
            target = min(current + FAST_GROWTH * 60.0, NEAR_LOW * self.w_max)
        else:
            target = current + self._probe(now) * 60.0 * self.w_max / current
        self._set(min(cap, target), now)

    def _probe(self, now: float) -> float:
        """Probing growth per second (share of the last failing rate): doubles every PROBE_DOUBLING_S."""
        quiet = max(0.0, now - self.cut_at)
        return min(FAST_GROWTH, SLOW_GROWTH * 2.0 ** min(30.0, quiet / PROBE_DOUBLING_S))

    def _set(self, rpm: float, now: float) -> None:
        self.current = rpm
        if self.bucket is None:
            self.bucket = Bucket(rpm, now, full=False)
        else:
            self.bucket.set_rate(rpm, now)

    def interval(self, base: float) -> float:
        """One request's share of the current rate (at most `base`)."""
        return min(base, 60.0 / self.current) if self.current else base
