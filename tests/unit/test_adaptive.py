"""The adaptive rate against simulated limiters: a strict nginx-style limiter, a limit that rises, pacing."""
from __future__ import annotations

import heapq
import random

import pytest

from mpdistill.engine.adaptive import AdaptiveRate
from mpdistill.engine.keypool import KeyPool
from mpdistill.engine.ratelimit import Bucket
from mpdistill.provider.endpoint import Endpoint


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class StrictLimiter:
    """nginx `limit_req` without burst: a request is admitted only 1/R (to the ms) after the last admitted."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.last_ms: int | None = None

    def admits(self, now: float) -> bool:
        ms = int(now * 1000)
        if self.last_ms is None or (ms - self.last_ms) * self.rate >= 1000:
            self.last_ms = ms
            return True
        return False


def simulate(rate: float, configured_rpm: float | None, seconds: float, *, jitter_s: float = 0.001,
             latency_s: float = 0.05, rise_at: float | None = None, seed: int = 7,
             tail: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, bool]]:
    """A pool of 64 slots sending as fast as the key pool allows, each request reaching its worker up to
    `jitter_s` late (and, for a `tail` share of them, up to `tail` seconds more), the worker holding it
    until its slot; the limit doubles at `rise_at`. Returns (arrival time from the start, admitted)."""
    clock, rng = Clock(), random.Random(seed)
    pool = KeyPool([Endpoint(name="a", base_url="http://127.0.0.1/a", api_key="k", rpm=configured_rpm)],
                   clock=clock, rng=random.Random(seed))
    server, answers, log, start = StrictLimiter(rate), [], [], clock.t
    while clock.t - start < seconds:
        if rise_at is not None and clock.t - start >= rise_at:
            server.rate = 2 * rate
        while answers and answers[0][0] <= clock.t:
            _, admitted = heapq.heappop(answers)
            if admitted:
                pool.release("a", ok=True, reserved_tokens=0)
            else:
                pool.rate_limited("a", 1.0, 0)
        if len(answers) < 64 and pool.acquire("m", 0):
            late = rng.random() * jitter_s + (rng.random() * tail[1] if rng.random() < tail[0] else 0.0)
            arrival = max(clock.t + late, pool.slot("a")) + rng.random() * 0.0002
            admitted = server.admits(arrival)
            log.append((arrival - start, admitted))
            heapq.heappush(answers, (arrival + (latency_s if admitted else 0.002), admitted))
            continue
        wake = clock.t + max(pool.wait_time("m", 0) or 0.0, 0.0005)
        clock.t = min(wake, answers[0][0]) if answers else wake
    return log


def ok_rate(log, start: float, end: float) -> float:
    return sum(1 for t, ok in log if ok and start <= t < end) / (end - start)


@pytest.mark.parametrize("rate", [20, 50])
def test_strict_limiter_with_rpm_three_times_too_high(rate):
    """Against a strict limiter (no burst) told 3× its limit: steady ok rate ≥ 0.95 R and ≤ 2 % 429s."""
    log = simulate(rate, 3 * rate * 60, seconds=60)
    share_429 = sum(1 for _, ok in log if not ok) / len(log)
    steady = ok_rate(log, 6, 54) / rate
    assert steady >= 0.95, (steady, share_429)
    assert share_429 <= 0.02, (steady, share_429)


@pytest.mark.parametrize("rate", [20, 50])
def test_late_tasks_keep_their_slots(rate):
    """A tenth of the requests reach their worker up to 10 ms late (a busy machine): the slots they are
    held until keep the strict limiter's targets (≥ 0.95 R, ≤ 2 % 429s)."""
    log = simulate(rate, 3 * rate * 60, seconds=60, tail=(0.1, 0.010))
    share_429 = sum(1 for _, ok in log if not ok) / len(log)
    steady = ok_rate(log, 6, 54) / rate
    assert steady >= 0.95 and share_429 <= 0.02, (steady, share_429)


def test_a_limit_that_doubles_is_followed_within_30_s():
    """The server allows R, then 2R from 30 s on: probing keeps going after the cuts and finds 2R within 30 s."""
    log = simulate(20, 3 * 20 * 60, seconds=90, rise_at=30)
    reached = next((t for t in range(30, 88) if ok_rate(log, t, t + 2) >= 0.9 * 40), None)
    assert reached is not None and reached - 30 <= 30, [round(ok_rate(log, t, t + 1)) for t in range(25, 90, 5)]


def test_probing_after_a_cut_speeds_up_the_longer_no_429_comes():
    """Just under the last failing rate, growth per success starts slow and doubles every few quiet seconds."""
    rate = AdaptiveRate(6000.0, now=0.0)
    rate.w_max, rate.current, rate.cut_at = 1200.0, 1170.0, 0.0
    rate.ok(1.0)
    early = rate.current - 1170.0
    rate.current = 1170.0
    rate.ok(13.0)
    late = rate.current - 1170.0
    assert late > 8 * early > 0


def test_a_429_near_the_last_limit_cuts_gently():
    """A 429 while probing just above the last failing rate cuts by 3 %, not to the admitted rate."""
    rate = AdaptiveRate(6000.0, now=0.0)
    for i in range(120):          # a minute at 120 rpm
        rate.take(i * 0.5)
    rate.w_max, rate.current = 120.0, 121.0
    rate.cut(now=60.0, since=0.0, in_flight=0, name="a")
    assert rate.current == pytest.approx(121.0 * 0.97)


def test_after_a_429_requests_leave_evenly_spaced():
    """A paced bucket never bursts: after any pause, one request, then one per interval."""
    bucket = Bucket(600, now=0.0, full=True)
    bucket.pace()
    assert bucket.wait(1, 10.0) == 0.0
    bucket.give(-1)
    assert bucket.wait(1, 10.0) == pytest.approx(0.1)


def test_a_429_after_a_ramp_learns_the_rate_of_the_last_slots():
    """Paced requests ramping from 15 to 20 r/s draw a 429: the rate it was drawn at is the spacing of
    the last slots (20 r/s), not the last second's average (~17.5 r/s), which probing would climb
    back from slowly."""
    rate = AdaptiveRate(3600.0, now=0.0)
    rate.cut(now=0.5, since=0.0, in_flight=0, name="a")   # a first, blind cut: paced from now on
    now = 1.0
    for step in range(40):
        rate._set(900.0 + 300.0 * min(1.0, step / 30), now)   # 15 -> 20 r/s over the first 30 requests
        now = rate.take(now)
    rate.cut(now=now + 0.002, since=0.0, in_flight=0, name="a")
    assert rate.w_max == pytest.approx(1200.0, rel=0.01)


def test_the_awake_window_is_a_small_share_of_the_interval():
    """Unpaced requests never spin; paced ones stay awake 5 % of their interval, at most 1.5 ms."""
    rate = AdaptiveRate(60_000.0, now=0.0)
    assert rate.awake_s() == 0.0
    rate.cut(now=0.5, since=0.0, in_flight=0, name="a")
    rate._set(1200.0, 1.0)     # 20 r/s: 50 ms apart
    assert rate.awake_s() == pytest.approx(0.0015)
    rate._set(60_000.0, 1.0)   # 1,000 r/s: 1 ms apart
    assert rate.awake_s() == pytest.approx(0.00005)
