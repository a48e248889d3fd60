"""KeyPool: endpoint choice, token buckets, cooldowns and AIMD, all on a fake clock."""
from __future__ import annotations

import collections
import heapq
import random

import pytest

from mpdistill.provider.endpoint import Endpoint
from mpdistill.errors import ConfigError
from mpdistill.engine.adaptive import BLIND_DECREASE
from mpdistill.engine.keypool import BUSY_POLL_S, KeyPool

KEY_A, KEY_B = "sk-test-0001-alpha", "sk-test-0002-bravo"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class MaxRng:
    """random.Random stand-in whose jitter factor is always 1, so cooldowns are exact."""

    def random(self) -> float:
        return 1.0


def ep(name="a", key=KEY_A, **limits) -> Endpoint:
    return Endpoint(name=name, base_url=f"http://127.0.0.1/{name}", api_key=key, **limits)


def make(*endpoints, **kwargs) -> tuple[KeyPool, FakeClock]:
    clock = FakeClock()
    kwargs.setdefault("rng", MaxRng())
    return KeyPool(list(endpoints), clock=clock, **kwargs), clock


def state(pool: KeyPool, name: str) -> dict:
    return next(s for s in pool.snapshot() if s["name"] == name)


# -- buckets and slots ----------------------------------------------------------------------------

def test_request_bucket_refills_with_the_clock():
    """At 60 rpm one request fits now, the next after exactly one second of refill."""
    pool, clock = make(ep(rpm=60))
    assert pool.acquire("m", 0) == "a"
    assert pool.acquire("m", 0) is None
    assert pool.wait_time("m", 0) == pytest.approx(1.0)
    clock.advance(0.5)
    assert pool.acquire("m", 0) is None
    assert pool.wait_time("m", 0) == pytest.approx(0.5)
    clock.advance(0.5)
    assert pool.acquire("m", 0) == "a"


def test_request_bucket_starts_with_one_token_and_holds_one_second_of_rate():
    """At 600 rpm a new bucket sends one request (slow start); once full it bursts 10, then one every 0.1 s."""
    pool, clock = make(ep(rpm=600))
    assert [pool.acquire("m", 0) for _ in range(2)] == ["a", None]
    clock.advance(5.0)
    assert [pool.acquire("m", 0) for _ in range(11)] == ["a"] * 10 + [None]
    clock.advance(0.1)
    assert pool.acquire("m", 0) == "a"


def test_tpm_reservation_refund_and_overdraw():
    """Estimated tokens are reserved; the real usage refunds the difference or takes the extra."""
    pool, clock = make(ep(tpm=600))  # 10 tokens a second, bucket of 10
    assert pool.acquire("m", 8) == "a"
    assert pool.acquire("m", 8) is None
    pool.release("a", ok=True, reserved_tokens=8, used_tokens=2)   # refund 6: 8 left
    assert pool.acquire("m", 8) == "a"                              # 0 left
    pool.release("a", ok=True, reserved_tokens=8, used_tokens=18)  # take 10 more: -10
    assert pool.wait_time("m", 5) == pytest.approx(1.5)
    clock.advance(1.5)
    assert pool.acquire("m", 5) == "a"


def test_request_larger_than_the_token_bucket_runs_when_it_is_full():
    """A request bigger than the bucket is not starved: it goes when the bucket is full, leaving a debt."""
    pool, clock = make(ep(tpm=600))
    assert pool.acquire("m", 50) == "a"
    assert pool.wait_time("m", 5) == pytest.approx(4.5)
    clock.advance(4.5)
    assert pool.acquire("m", 5) == "a"


def test_concurrency_cap():
    """max_concurrency bounds calls in flight; a release frees a slot."""
    pool, _ = make(ep(max_concurrency=2))
    assert [pool.acquire("m", 0) for _ in range(3)] == ["a", "a", None]
    assert pool.in_flight("a") == 2
    assert pool.wait_time("m", 0) == BUSY_POLL_S
    pool.release("a", ok=True, reserved_tokens=0)
    assert pool.acquire("m", 0) == "a"


def test_unlimited_endpoint_never_blocks():
    """No rpm, tpm or cap: every acquire succeeds and wait_time is 0."""
    pool, _ = make(ep())
    assert all(pool.acquire("m", 10**6) == "a" for _ in range(1000))
    assert pool.wait_time("m", 10**6) == 0.0


def test_model_routing():
    """Only endpoints that serve the model are chosen; none serving it means wait_time None."""
    pool, _ = make(ep("a", models=("small",)), ep("b", KEY_B, models=("big",)))
    assert pool.acquire("big", 0) == "b"
    assert pool.acquire("small", 0) == "a"
    assert pool.acquire("other", 0) is None
    assert pool.wait_time("other", 0) is None


# -- spreading -------------------------------------------------------------------------------------

def test_equal_endpoints_alternate():
    """With immediate answers, equal endpoints take turns."""
    pool, _ = make(ep("a"), ep("b", KEY_B))
    chosen = []
    for _ in range(6):
        chosen.append(pool.acquire("m", 0))
        pool.release(chosen[-1], ok=True, reserved_tokens=0)
    assert chosen == ["a", "b"] * 3


def test_weight_spreads_requests_with_immediate_answers():
    """Weights 2:1 give a 2:1 share of requests when calls end at once."""
    pool, _ = make(ep("a", weight=2.0), ep("b", KEY_B, weight=1.0))
    counts = collections.Counter()
    for _ in range(300):
        name = pool.acquire("m", 0)
        counts[name] += 1
        pool.release(name, ok=True, reserved_tokens=0)
    assert counts == {"a": 200, "b": 100}


def test_weight_spreads_calls_in_flight():
    """Weights 2:1 give a 2:1 share of calls in flight when calls are slow."""
    pool, _ = make(ep("a", weight=2.0), ep("b", KEY_B, weight=1.0))
    for _ in range(30):
        pool.acquire("m", 0)
    assert (pool.in_flight("a"), pool.in_flight("b")) == (20, 10)


def test_returning_endpoint_does_not_take_a_burst():
    """An endpoint back from a cooldown takes turns again; it does not catch up on missed requests."""
    pool, clock = make(ep("a"), ep("b", KEY_B), cooldown_base=10.0)
    for _ in range(3):
        assert [pool.acquire("m", 0), pool.acquire("m", 0)] == ["a", "b"]
        pool.failed("a", 0, transient=True)
        pool.release("b", ok=True, reserved_tokens=0)
    assert pool.wait_time("m", 0) == 0.0 and state(pool, "a")["cooldown_until"] == pytest.approx(10.0)
    for _ in range(20):
        pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
    clock.advance(10.0)
    chosen = []
    for _ in range(10):
        chosen.append(pool.acquire("m", 0))
        pool.release(chosen[-1], ok=True, reserved_tokens=0)
    assert chosen.count("a") <= 6 and chosen[-4:].count("a") == 2


def test_prefers_the_endpoint_with_more_budget_left():
    """Between two idle endpoints, the one whose request bucket is fuller is chosen."""
    pool, clock = make(ep("a", rpm=600), ep("b", KEY_B, rpm=6000))
    clock.advance(1.0)  # both buckets full
    chosen = []
    for _ in range(10):
        chosen.append(pool.acquire("m", 0))
        pool.release(chosen[-1], ok=True, reserved_tokens=0)
    assert chosen.count("b") > chosen.count("a")


# -- 429s, cooldowns, AIMD -------------------------------------------------------------------------

def test_cooldown_honours_retry_after():
    """After a 429 with Retry-After 5, the endpoint rests exactly 5 s while another takes the load."""
    pool, clock = make(ep("a"), ep("b", KEY_B))
    assert pool.acquire("m", 0) == "a"
    pool.rate_limited("a", 5.0, 0)
    assert state(pool, "a")["cooldown_until"] == pytest.approx(5.0)
    assert pool.acquire("m", 0) == "b"
    pool.release("b", ok=True, reserved_tokens=0)
    clock.advance(4.9)
    assert pool.acquire("m", 0) == "b"
    pool.release("b", ok=True, reserved_tokens=0)
    assert pool.acquire("m", 0) == "b"  # a is still cooling
    clock.advance(0.1)
    assert pool.acquire("m", 0) == "a"


def test_wait_time_reports_the_cooldown():
    """wait_time is the rest of the cooldown when the only endpoint cools down."""
    pool, clock = make(ep())
    pool.acquire("m", 0)
    pool.rate_limited("a", 3.0, 0)
    assert pool.wait_time("m", 0) == pytest.approx(3.0)
    clock.advance(1.0)
    assert pool.wait_time("m", 0) == pytest.approx(2.0)
    clock.advance(2.0)
    assert pool.wait_time("m", 0) == 0.0


def test_cooldown_without_retry_after_grows_and_resets():
    """Consecutive 429s without Retry-After cool down 1, 2, 4 s (capped at 3); a success resets the growth."""
    pool, clock = make(ep(), cooldown_base=1.0, cooldown_max=3.0)
    seen = []
    for _ in range(3):
        pool.acquire("m", 0)
        pool.rate_limited("a", None, 0)
        seen.append(state(pool, "a")["cooldown_until"])
        clock.advance(60.0)  # past the cooldown and the learnt request interval
    assert seen == pytest.approx([1.0, 2.0, 3.0])
    pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
    clock.advance(60.0)
    assert pool.acquire("m", 0) == "a"
    pool.rate_limited("a", None, 0)
    assert state(pool, "a")["cooldown_until"] == pytest.approx(1.0)


def test_429_refunds_reserved_tokens():
    """A 429 gives the reserved tokens back to the token bucket."""
    pool, _ = make(ep("a", tpm=600))
    assert pool.acquire("m", 10) == "a"
    assert pool.acquire("m", 10) is None
    pool.acquire("m", 0)
    pool.rate_limited("a", 0.0, 10)
    pool.rate_limited("a", 0.0, 0)
    assert pool.acquire("m", 10) == "a"


def test_burst_of_429s_cuts_the_rate_once():
    """Ten calls in flight that all come back 429 cut the rate once (halved: no second of traffic yet says
    what the server admits), not ten times."""
    pool, clock = make(ep(rpm=600))
    clock.advance(1.0)
    for _ in range(10):
        pool.acquire("m", 0)
    for _ in range(10):
        pool.rate_limited("a", 0.5, 0)
    snap = state(pool, "a")
    assert snap["current_rpm"] == pytest.approx(600.0 * BLIND_DECREASE)
    assert snap["rate_limited"] == 10 and snap["in_flight"] == 0


def test_rate_grows_back_but_never_above_the_configured_rpm():
    """A 429 cuts to just under the admitted rate; successes raise it again, up to the configured rpm only."""
    pool, clock = make(ep(rpm=600))
    for _ in range(120):  # 12 s at the configured 600 rpm
        pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
        clock.advance(0.1)
    pool.acquire("m", 0)
    pool.rate_limited("a", 0.0, 0)
    assert 0.9 * 540 <= state(pool, "a")["current_rpm"] <= 540  # 9 oks in the last second: 540 rpm admitted
    for _ in range(5000):
        clock.advance(0.2)
        pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
    assert state(pool, "a")["current_rpm"] == pytest.approx(600.0)


def test_429_cuts_from_the_rate_actually_sent():
    """When fewer requests went out than the configured rpm allows, the cut starts from what was sent."""
    pool, clock = make(ep(rpm=6000))
    for _ in range(60):  # 60 rpm for a minute, far below 6000
        pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
        clock.advance(1.0)
    pool.acquire("m", 0)
    pool.rate_limited("a", 0.0, 0)
    assert state(pool, "a")["current_rpm"] == pytest.approx(0.7 * 61, rel=0.05)


def test_unconfigured_rpm_learns_a_limit_from_the_observed_rate():
    """Without a configured rpm, a 429 starts a limit at 0.7 × the rate of the last minute."""
    pool, clock = make(ep())
    for _ in range(60):  # 60 requests over 30 s: 120 rpm observed
        pool.release(pool.acquire("m", 0), ok=True, reserved_tokens=0)
        clock.advance(0.5)
    assert state(pool, "a")["current_rpm"] is None
    pool.acquire("m", 0)
    pool.rate_limited("a", 0.0, 0)
    assert state(pool, "a")["current_rpm"] == pytest.approx(0.7 * 61 * 2, rel=0.05)
    assert state(pool, "a")["rpm"] is None


class SlidingWindowServer:
    """A fake server that accepts at most `limit` requests in any `window` seconds."""

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit, self.window = limit, window
        self.accepted: collections.deque[float] = collections.deque()

    def call(self, now: float) -> tuple[bool, float]:
        while self.accepted and self.accepted[0] <= now - self.window:
            self.accepted.popleft()
        if len(self.accepted) < self.limit:
            self.accepted.append(now)
            return True, 0.0
        return False, self.accepted[0] + self.window - now


def simulate(limit_rps: int, configured_rpm: float | None, seconds: float = 60.0) -> tuple[float, float]:
    """Acquire as fast as allowed against the fake server, each request answered at once when it
    reaches the server at its slot; return (ok rate / limit, share of 429s)."""
    pool, clock = make(ep(rpm=configured_rpm), rng=random.Random(7))
    start, server, ok, limited, held = clock.t, SlidingWindowServer(limit_rps), 0, 0, []
    while clock.t - start < seconds:
        while held and held[0][0] <= clock.t:
            _, _, name = heapq.heappop(held)
            accepted, retry_after = server.call(clock.t)
            ok, limited = ok + accepted, limited + (not accepted)
            if accepted:
                pool.release(name, ok=True, reserved_tokens=100, used_tokens=100)
            else:
                pool.rate_limited(name, retry_after, 100)
        name = pool.acquire("m", 100)
        if name is not None:
            heapq.heappush(held, (max(clock.t, pool.slot(name)), ok + limited + len(held), name))
            continue
        wait = max(pool.wait_time("m", 100), 1e-6)
        clock.advance(min(wait, held[0][0] - clock.t) if held else wait)
    return ok / seconds / limit_rps, limited / (ok + limited)


@pytest.mark.parametrize("limit_rps", [20, 100])
def test_aimd_converges_under_a_limit_set_three_times_too_high(limit_rps):
    """With rpm configured at 3× the server's limit, ok throughput is ≥ 95 % of it and 429s ≤ 2 %."""
    throughput, share_429 = simulate(limit_rps, configured_rpm=3 * 60 * limit_rps)
    assert throughput >= 0.95, (throughput, share_429)
    assert share_429 <= 0.02, (throughput, share_429)


def test_aimd_converges_without_a_configured_rpm():
    """With no rpm configured, the learnt limit also gives ≥ 95 % of the server's limit and ≤ 2 % 429s."""
    throughput, share_429 = simulate(20, configured_rpm=None)
    assert throughput >= 0.95, (throughput, share_429)
    assert share_429 <= 0.02, (throughput, share_429)


# -- rate-limit headers ----------------------------------------------------------------------------

@pytest.mark.parametrize(("reset", "hold"), [("2s", 2.0), ("6m0s", 360.0), ("1.5", 1.5), ("250ms", 0.25)])
def test_exhausted_budget_header_holds_until_reset(reset, hold):
    """x-ratelimit-remaining-requests 0 holds the endpoint for x-ratelimit-reset-requests."""
    pool, _ = make(ep())
    pool.acquire("m", 0)
    pool.release("a", ok=True, reserved_tokens=0,
                 headers={"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": reset})
    assert pool.wait_time("m", 0) == pytest.approx(hold)


def test_budget_headers_with_room_left_do_not_hold():
    """Remaining budget above zero, or unreadable values, change nothing."""
    pool, _ = make(ep())
    pool.acquire("m", 0)
    pool.release("a", ok=True, reserved_tokens=0, headers={
        "x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "junk",
        "x-ratelimit-reset-tokens": "soon"})
    assert pool.wait_time("m", 0) == 0.0


# -- failures, disabling, outages ------------------------------------------------------------------

def test_disable_once_and_skip():
    """disable returns True only the first time; a disabled endpoint is never chosen again."""
    pool, _ = make(ep("a"), ep("b", KEY_B))
    assert pool.disable("a", "HTTP 401") is True
    assert pool.disable("a", "HTTP 401 again") is False
    assert {pool.acquire("m", 0) for _ in range(5)} == {"b"}
    snap = state(pool, "a")
    assert snap["disabled"] is True and snap["disabled_reason"] == "HTTP 401"


def test_disable_reason_never_holds_the_key():
    """A reason that quotes the key is stored with the key masked."""
    pool, _ = make(ep())
    pool.disable("a", f"Incorrect API key provided: {KEY_A}")
    assert KEY_A not in repr(pool.snapshot())


def test_all_disabled_and_wait_time_none():
    """all_disabled (globally or per model) turns true when the last key goes; wait_time becomes None."""
    pool, _ = make(ep("a", models=("x",)), ep("b", KEY_B))
    pool.disable("b", "HTTP 403")
    assert pool.all_disabled("y") is True       # only b served y
    assert pool.all_disabled("x") is False
    assert pool.all_disabled() is False
    assert pool.wait_time("y", 0) is None
    pool.disable("a", "HTTP 401")
    assert pool.all_disabled() is True
    assert pool.wait_time("x", 0) is None


def test_wait_time_is_the_earliest_endpoint():
    """wait_time is the minimum over endpoints: 0 when any can take the request now."""
    pool, clock = make(ep("a", rpm=60), ep("b", KEY_B, rpm=30))
    assert pool.wait_time("m", 0) == 0.0
    pool.acquire("m", 0)
    pool.acquire("m", 0)
    assert pool.wait_time("m", 0) == pytest.approx(1.0)


def fail_everywhere(pool: KeyPool, times: int) -> None:
    for _ in range(times):
        names = [pool.acquire("m", 0), pool.acquire("m", 0)]
        assert sorted(names) == ["a", "b"]
        for name in names:
            pool.failed(name, 0, transient=True)


def test_outage_after_repeated_transient_failures_and_recovery():
    """Three transient failures in a row everywhere is an outage; after the cooldown it probes again."""
    pool, clock = make(ep("a"), ep("b", KEY_B), cooldown_base=2.0)
    fail_everywhere(pool, 2)
    assert pool.all_unavailable() is False
    fail_everywhere(pool, 1)
    assert pool.all_unavailable() is True
    assert pool.acquire("m", 0) is None
    assert pool.wait_time("m", 0) == pytest.approx(2.0)
    clock.advance(2.0)
    assert pool.all_unavailable() is False
    for name in (pool.acquire("m", 0), pool.acquire("m", 0)):
        pool.release(name, ok=True, reserved_tokens=0)
    name = pool.acquire("m", 0)
    pool.failed(name, 0, transient=True)   # the streak was reset: one failure is no cooldown
    assert state(pool, name)["cooldown_until"] is None
    assert pool.all_unavailable() is False


def test_outage_cooldown_grows_while_probes_keep_failing():
    """A probe that fails after the cooldown cools the endpoint down for longer."""
    pool, clock = make(ep(), cooldown_base=2.0)
    for _ in range(3):
        pool.acquire("m", 0)
        pool.failed("a", 0, transient=True)
    assert pool.wait_time("m", 0) == pytest.approx(2.0)
    clock.advance(2.0)
    pool.acquire("m", 0)
    pool.failed("a", 0, transient=True)
    assert pool.wait_time("m", 0) == pytest.approx(4.0)


def test_non_transient_failures_never_cool_down():
    """Rejected rows count as errors but never make the endpoint unavailable."""
    pool, _ = make(ep())
    for _ in range(10):
        pool.acquire("m", 0)
        pool.failed("a", 0, transient=False)
        pool.acquire("m", 0)
        pool.release("a", ok=False, reserved_tokens=0)
    assert pool.all_unavailable() is False
    assert state(pool, "a")["errors"] == 20


def test_all_unavailable_is_false_when_every_key_is_disabled():
    """Every key disabled is all_disabled, not an outage."""
    pool, _ = make(ep())
    pool.disable("a", "HTTP 401")
    assert pool.all_unavailable() is False


# -- bookkeeping -----------------------------------------------------------------------------------

def test_snapshot_counts_and_masks_keys():
    """snapshot reports counters and limits, and the raw key appears nowhere in it."""
    pool, clock = make(ep("a", rpm=120, tpm=1000, max_concurrency=4), ep("b", KEY_B))
    clock.advance(1.0)
    pool.acquire("m", 1)
    pool.release("a", ok=True, reserved_tokens=1, used_tokens=1)
    pool.acquire("m", 1)
    snap = pool.snapshot()
    a = snap[0]
    assert (a["requests"], a["ok"], a["errors"], a["rate_limited"]) == (1, 1, 0, 0)
    assert (a["rpm"], a["tpm"], a["current_rpm"], a["cooldown_until"]) == (120, 1000, 120.0, None)
    assert snap[1]["in_flight"] == 1 and a["key"] == "sk-…lpha"
    for text in (repr(snap), str(snap), repr(pool)):
        assert KEY_A not in text and KEY_B not in text


def test_ending_a_call_that_is_not_in_flight_is_an_error():
    """release/failed/rate_limited without a call in flight, or for an unknown name, raise."""
    pool, _ = make(ep())
    with pytest.raises(ValueError):
        pool.release("a", ok=True, reserved_tokens=0)
    with pytest.raises(KeyError):
        pool.failed("nope", 0, transient=True)


def test_pool_needs_unique_endpoints():
    """An empty pool or a repeated name is a configuration error."""
    with pytest.raises(ConfigError):
        KeyPool([])
    with pytest.raises(ConfigError):
        KeyPool([ep("a"), ep("a", KEY_B)])


def test_all_down_lasts_through_cooldowns_until_an_endpoint_answers():
    """all_down() stays true while probes keep failing, across cooldown ends, and clears on an answer."""
    pool, clock = make(ep("a"), ep("b", KEY_B), cooldown_base=2.0)
    fail_everywhere(pool, 3)
    assert pool.all_down() is True
    clock.advance(2.0)
    assert pool.all_unavailable() is False   # the cooldown ended: a probe may go
    assert pool.all_down() is True           # but nothing has answered: the outage goes on
    name = pool.acquire("m", 0)
    pool.release(name, ok=True, reserved_tokens=0)
    assert pool.all_down() is False
