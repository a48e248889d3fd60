"""The shared budget of a job's endpoints: one KeyPool for every shard, granting requests in leases.

It holds the endpoints' buckets, cooldowns and adaptive rates (the engine's KeyPool logic,
learned once for the whole job). A shard leases a few request grants at a time and reports how
each call ended; a 429 reported by any shard slows every shard. Plain Python: the Ray executor
runs it as a named actor, tests run it in-process.

A grant is a request slot with a time: once a 429 has taught the endpoint a rate, the pool
paces requests one interval apart, so a lease granted only what is free *now* would get one
request per call, and the job's rate would be the rate of lease calls. Instead the service
books the next slots of the paced schedule up to AHEAD_S ahead (the pool is asked at each
slot's time) and tells the shard how long to hold each one; shards spend their grants at those
times, so the whole job sends evenly spaced requests at the learned rate.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter

from ..engine.keypool import KeyPool
from ..provider.endpoint import Endpoint

log = logging.getLogger(__name__)

MAX_RETRY_S = 0.25   # the longest a shard that got no grant is told to wait before asking again
AHEAD_S = 0.25       # slots are booked at most this far ahead (what a cut rate cannot take back)
ACTIVE_S = 1.0       # a shard that leased within this long shares the slots ahead


class BudgetService:
    """Grants and outcome reports of every shard, applied to one KeyPool."""

    def __init__(self, endpoints: list[dict], clock=time.monotonic) -> None:
        self._clock = clock
        self._at: float | None = None         # the slot being booked: the pool's time while granting
        self._pool = KeyPool([Endpoint(**{**e, "models": tuple(e.get("models") or ())}) for e in endpoints],
                             clock=self._pool_time, pace_lead=0.0)   # shards send a grant at its time
        self._returned: Counter = Counter()   # grants given back unused: not calls, not errors
        self._grants: Counter = Counter()     # grants per shard, for the snapshot
        self._leased_at: dict[int, float] = {}
        self._reports = 0

    def _pool_time(self) -> float:
        return self._at if self._at is not None else self._clock()

    def lease(self, shard: int, model: str, est_tokens: int, count: int, reports: list) -> dict:
        """Apply `reports`, then grant up to `count` requests for `model`.

        Returns {"grants": [[endpoint name, seconds to hold it before sending]], "wait": seconds
        until more could be granted (None: no enabled endpoint serves the model), "down",
        "unavailable", "disabled"} for the shard's pool.
        """
        self.report(shard, reports)
        now = self._clock()
        self._leased_at[shard] = now
        grants = self._book(model, est_tokens, min(max(1, count), self._fair_share(now)), now)
        self._grants[shard] += len(grants)
        wait = 0.0 if grants else self._retry_in(model, est_tokens, count, now)
        return {"grants": grants, "wait": wait, "rates": self._rates(), "down": self._pool.all_down(),
                "unavailable": self._pool.all_unavailable(), "disabled": self._pool.all_disabled(model)}

    def _rates(self) -> dict:
        """Every endpoint's request rate now (rpm; None: unlimited), so shards can drop grants booked
        at a rate a 429 has since cut deeply."""
        return {row["name"]: row["current_rpm"] for row in self._pool.snapshot()}

    def _book(self, model: str, est_tokens: int, count: int, now: float) -> list:
        """The next `count` slots of the pool's schedule within AHEAD_S: [name, delay] pairs."""
        grants, at = [], now
        try:
            while len(grants) < count:
                self._at = at
                wait = self._pool.wait_time(model, est_tokens)
                if wait is None or at + wait - now > AHEAD_S:
                    break
                at += wait
                self._at = at
                name = self._pool.acquire(model, est_tokens)
                if name is None:   # a float's rounding at the slot's edge: the next look finds it
                    at += 1e-6
                    continue
                grants.append([name, round(at - now, 6)])
        finally:
            self._at = None
        return grants

    def _fair_share(self, now: float) -> int:
        """At most this many grants per lease: the slots ahead split among the shards leasing and
        one more (a shard that starts, or comes back, finds a slot at its first lease).

        One shard taking every slot ahead would leave the others polling; unlimited endpoints
        (no rate) book slots 'now' and this cap does not bind them (every lease still asks for a
        few).
        """
        active = sum(1 for at in self._leased_at.values() if now - at <= ACTIVE_S)
        rates = [row["current_rpm"] for row in self._pool.snapshot() if not row["disabled"]]
        if not rates or any(r is None for r in rates):
            return 1 << 30
        ahead = sum(rates) / 60.0 * AHEAD_S
        return max(1, math.ceil(ahead / (active + 1)))

    def _retry_in(self, model: str, est_tokens: int, count: int, now: float) -> float | None:
        """When a shard that got nothing should ask again: when a slot frees within AHEAD_S, and
        not sooner than a lease's worth of slots (every shard asking at each free slot would poll
        the service at the full request rate)."""
        wait = self._pool.wait_time(model, est_tokens)
        if wait is None:
            return None
        wait = max(0.0, wait - AHEAD_S)
        rates = [row["current_rpm"] for row in self._pool.snapshot() if not row["disabled"]]
        if rates and all(r is not None for r in rates) and sum(rates) > 0:
            share = min(max(1, count), self._fair_share(now))
            wait = max(wait, min(MAX_RETRY_S, share * 60.0 / sum(rates)))
        return wait

    def report(self, shard: int, reports: list) -> None:
        """How leased calls ended: (kind, endpoint, *args) tuples, in the order they ended."""
        for kind, name, *args in reports:
            self._reports += 1
            if kind == "release":
                ok, reserved, used, headers = args
                self._pool.release(name, ok=ok, reserved_tokens=reserved, used_tokens=used, headers=headers)
            elif kind == "429":
                retry_after, reserved = args
                self._pool.rate_limited(name, retry_after, reserved)
            elif kind == "failed":
                reserved, transient = args
                self._pool.failed(name, reserved, transient=transient)
            elif kind == "return":
                (reserved,) = args
                self._pool.failed(name, reserved, transient=False)   # ends the grant, refunds its tokens
                self._returned[name] += 1
            elif kind == "disable":
                (reason,) = args
                if self._pool.disable(name, reason):
                    log.error("endpoint %s disabled for the whole job: %s", name, reason)
            else:
                log.warning("shard %d sent an unknown budget report %r; ignored", shard, kind)

    def snapshot(self) -> list[dict]:
        """The key pool's per-endpoint figures; grants given back unused are not counted as calls."""
        rows = self._pool.snapshot()
        for row in rows:
            back = self._returned.get(row["name"], 0)
            row["requests"] -= back
            row["errors"] -= back
            row["shared"] = True
        return rows

    def stats(self) -> dict:
        """Grants per shard and reports received: for benchmarks and the job's status."""
        return {"grants": dict(self._grants), "reports": self._reports, "endpoints": self.snapshot()}
