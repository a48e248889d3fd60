"""The shared budget: leases from one BudgetService, static shares, and falling back when it is lost."""
from __future__ import annotations

from mpdistill.cluster.budget import default_share, scaled
from mpdistill.cluster.lease import LeasedPool, ServiceLost
from mpdistill.cluster.service import BudgetService
from mpdistill.engine.keypool import KeyPool
from mpdistill.provider.endpoint import Endpoint


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A service that can be made unreachable, like a lost Ray actor."""

    def __init__(self, service) -> None:
        self.service, self.lost = service, False

    def __getattr__(self, name):
        getattr(self.service, name)   # only what the service has (AttributeError otherwise)

        def call(*args):
            if self.lost:
                raise ServiceLost("actor died")
            return getattr(self.service, name)(*args)
        return call


def _endpoint(**kw):
    return {"name": "api", "base_url": "", "models": (), "rpm": 60.0, "tpm": None, "max_concurrency": None,
            "weight": 1.0, **kw}


def test_shards_share_one_request_budget():
    """Two shards leasing from one service together get no more requests than one endpoint's rpm allows."""
    clock = Clock()
    service = BudgetService([_endpoint(rpm=600.0)], clock=clock)
    pools = [LeasedPool(service, i, fallback=lambda learned: None, clock=clock) for i in range(2)]
    granted = 0
    for _ in range(100):
        for pool in pools:
            name = pool.acquire("m", 10)
            if name:
                granted += 1
                pool.release(name, ok=True, reserved_tokens=10, used_tokens=10)
        clock.now += 0.01
    assert granted <= 600.0 / 60 * 1.0 + 2  # one second of budget (plus the bucket's first token)


def test_a_429_reported_by_one_shard_cuts_the_shared_rate():
    """A 429 that one shard reports lowers the rate every shard leases from."""
    clock = Clock()
    service = BudgetService([_endpoint(rpm=6000.0)], clock=clock)
    pool = LeasedPool(service, 0, fallback=lambda learned: None, clock=clock)
    for _ in range(50):
        name = pool.acquire("m", 1)
        if name:
            pool.rate_limited(name, None, 1)
        clock.now += 0.01
    assert service.snapshot()[0]["current_rpm"] < 6000.0 and service.snapshot()[0]["rate_limited"] > 0


def test_unused_grants_go_back_without_counting_as_errors():
    """Grants left when a shard ends are returned, and the service does not count them as calls."""
    clock = Clock()
    service = BudgetService([_endpoint(rpm=None)], clock=clock)
    pool = LeasedPool(service, 0, fallback=lambda learned: None, clock=clock)
    name = pool.acquire("m", 1)
    pool.release(name, ok=True, reserved_tokens=1, used_tokens=1)
    pool.close()
    row = service.snapshot()[0]
    assert row["in_flight"] == 0 and row["errors"] == 0 and row["requests"] == 1


def test_a_lost_service_falls_back_to_a_local_share():
    """When the service is lost, the pool goes on with the local pool the fallback builds, calls in flight included."""
    clock = Clock()
    flaky = Flaky(BudgetService([_endpoint(rpm=None)], clock=clock))
    built = []

    def fallback(learned):
        built.append(learned)
        return KeyPool([Endpoint("api", "http://x", "k", rpm=30.0)], clock=clock)
    pool = LeasedPool(flaky, 0, fallback=fallback, clock=clock)
    first = pool.acquire("m", 1)
    clock.now += 2.0
    flaky.lost = True
    second = pool.acquire("m", 1)      # the lease fails: the local pool answers
    pool.release(first, ok=True, reserved_tokens=1, used_tokens=1)   # leased before: dropped quietly
    pool.release(second, ok=True, reserved_tokens=1, used_tokens=1)
    assert built and second == "api" and pool.local is not None and pool.in_flight("api") == 0


def test_static_share_divides_every_limit():
    """Without a shared service each shard gets limit ÷ shards running at once (concurrency at least 1)."""
    assert default_share(8, None) == 1 / 8 and default_share(8, 2) == 1 / 2 and default_share(1, 4) == 1.0
    (e,) = scaled([Endpoint("a", "u", "k", rpm=600.0, tpm=8000.0, max_concurrency=3)], 0.25)
    assert (e.rpm, e.tpm, e.max_concurrency) == (150.0, 2000.0, 1)


def _paced_service(clock, rpm=600.0):
    """A service whose endpoint ran at its rpm for two seconds, then drew a 429 (so requests are paced)."""
    service = BudgetService([_endpoint(rpm=rpm)], clock=clock)
    held = []
    for _ in range(200):
        reply = service.lease(0, "m", 1, 8, [("release", name, True, 1, 1, {}) for name in held[1:]])
        held = held[:1] + [name for name, _ in reply["grants"]]
        clock.now += 0.01
    service.report(0, [("release", name, True, 1, 1, {}) for name in held[1:]])
    service.report(0, [("429", held[0], 0.5, 1)])
    clock.now += 2.0
    return service


def test_a_paced_budget_grants_evenly_spaced_slots_ahead():
    """Once paced, one lease books several slots one interval apart, not just the one free now."""
    clock = Clock()
    service = _paced_service(clock)
    rpm = service.snapshot()[0]["current_rpm"]
    grants = service.lease(1, "m", 1, 8, [])["grants"]
    delays = [delay for _, delay in grants]
    assert len(grants) >= 2 and delays == sorted(delays)
    assert all(abs((b - a) - 60.0 / rpm) < 1e-3 for a, b in zip(delays, delays[1:]))


def test_a_grant_is_not_spent_before_its_time():
    """The shard's pool hands out a booked grant only when its slot has come, and says how long to wait."""
    clock = Clock()
    service = _paced_service(clock)
    pool = LeasedPool(service, 1, fallback=lambda learned: None, clock=clock)
    first = pool.acquire("m", 1)
    assert first == "api" and pool.acquire("m", 1) is None
    wait = pool.wait_time("m", 1)
    assert 0.0 < wait <= 60.0 / service.snapshot()[0]["current_rpm"] + 1e-6
    clock.now += wait
    assert pool.acquire("m", 1) == "api"


def test_shards_share_the_slots_ahead():
    """Slots booked ahead are split among the shards leasing: a second shard is not left polling."""
    clock = Clock()
    service = _paced_service(clock, rpm=6000.0)
    a = service.lease(1, "m", 1, 64, [])["grants"]
    b = service.lease(2, "m", 1, 64, [])["grants"]
    assert a and b and len(a) < 64


class Scripted:
    """A service that answers leases from a script and records the reports it is sent."""

    def __init__(self, replies) -> None:
        self.replies, self.reports = list(replies), []

    def lease(self, shard, model, est, count, reports):
        self.reports += reports
        return self.replies.pop(0)

    def report(self, shard, reports):
        self.reports += reports


def test_grants_booked_before_a_deep_cut_go_back():
    """Grants not yet due, booked at a rate a 429 has since cut below 0.9×, are returned, not sent."""
    clock = Clock()
    booked = {"grants": [["api", 0.0], ["api", 0.1], ["api", 0.2]], "wait": 0.0, "rates": {"api": 600.0}}
    cut = {"grants": [], "wait": 0.1, "rates": {"api": 300.0}}
    service = Scripted([booked, cut])
    pool = LeasedPool(service, 0, fallback=lambda learned: None, slots=8, clock=clock)
    assert pool.acquire("m", 1) == "api"          # the first is due; asking again brings the cut
    assert pool.acquire("m", 1) is None
    pool.flush()
    assert [r[0] for r in service.reports] == ["return", "return"]
