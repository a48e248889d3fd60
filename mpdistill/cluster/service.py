"""The shared budget of a job's endpoints: one KeyPool for every shard, granting requests in leases.

It holds the endpoints' buckets, cooldowns and adaptive rates (the engine's KeyPool logic,
learned once for the whole job). A shard leases a few request grants at a time and reports how
each call ended; a 429 reported by any shard slows every shard. Plain Python: the Ray executor
runs it as a named actor, tests run it in-process.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from ..engine.keypool import KeyPool
from ..provider.endpoint import Endpoint

log = logging.getLogger(__name__)

MAX_RETRY_S = 0.25   # the longest a shard that got no grant is told to wait before asking again


class BudgetService:
    """Grants and outcome reports of every shard, applied to one KeyPool."""

    def __init__(self, endpoints: list[dict], clock=time.monotonic) -> None:
        self._pool = KeyPool([Endpoint(**{**e, "models": tuple(e.get("models") or ())}) for e in endpoints],
                             clock=clock)
        self._returned: Counter = Counter()   # grants given back unused: not calls, not errors
        self._grants: Counter = Counter()     # grants per shard, for the snapshot
        self._reports = 0

    def lease(self, shard: int, model: str, est_tokens: int, count: int, reports: list) -> dict:
        """Apply `reports`, then grant up to `count` requests for `model`.

        Returns {"grants": [endpoint names], "wait": seconds until more could be granted (None:
        no enabled endpoint serves the model), "down", "disabled"} for the shard's pool.
        """
        self.report(shard, reports)
        grants = []
        for _ in range(max(1, count)):
            name = self._pool.acquire(model, est_tokens)
            if name is None:
                break
            grants.append(name)
        self._grants[shard] += len(grants)
        wait = 0.0 if grants else self._retry_in(model, est_tokens, count)
        return {"grants": grants, "wait": wait, "down": self._pool.all_down(),
                "unavailable": self._pool.all_unavailable(), "disabled": self._pool.all_disabled(model)}

    def _retry_in(self, model: str, est_tokens: int, count: int) -> float | None:
        """When a shard that got nothing should ask again: when a whole lease could be granted.

        Asking at the first free token would have every shard poll at the full request rate.
        """
        wait = self._pool.wait_time(model, est_tokens)
        if wait is None:
            return None
        rates = [row["current_rpm"] for row in self._pool.snapshot() if not row["disabled"]]
        if rates and all(r is not None for r in rates) and sum(rates) > 0:
            wait = max(wait, min(MAX_RETRY_S, max(1, count) * 60.0 / sum(rates)))
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
