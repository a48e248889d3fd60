"""A shard's key pool when the budget is shared: request grants leased from a `BudgetService`.

It has the engine's KeyPool interface. Grants come a few at a time, each with the time it may be
sent (the service books slots of one paced schedule for the whole job; see `service`); outcomes
are reported in batches (a 429 or a transient failure at once, so every shard learns of it quickly). If the
service is lost, the pool logs it and goes on alone with a conservative share: each limit (as
configured, or as last learned) divided by the shards still running.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Callable

log = logging.getLogger(__name__)

GRANT_BATCH = 8          # grants per lease at least (a shard with more slots asks for one per slot)
MAX_BATCH = 256
PENDING_POLL_S = 0.005   # while a lease is on its way, the manager looks again this soon
GRANT_TTL_S = 1.0        # a grant unused this long past its time goes back (its request slot is spent anyway)
REPORT_EVERY_S = 0.2     # ok outcomes are sent at least this often (they drive the rate's growth)
MAX_POLL_S = 0.25        # longest a shard waits before asking again for grants
RECALL_BELOW = 0.9       # a grant not yet due goes back when its endpoint's rate fell below this × its booking rate
SNAPSHOT_EVERY_S = 1.0


class ServiceLost(Exception):
    """The shared budget cannot be reached (the adapter raises it for any transport failure)."""


class Answered:
    """A lease call that has its answer already (an in-process service)."""

    def __init__(self, value) -> None:
        self.value = value

    def ready(self) -> bool:
        return True

    def result(self):
        return self.value


def start_call(service, method: str, *args):
    """Call `method` of the service without waiting: through its `call_async` if it has one."""
    if hasattr(service, "call_async"):
        return service.call_async(method, *args)
    return Answered(getattr(service, method)(*args))


class LeasedPool:
    """KeyPool interface over a shared budget; `fallback(endpoint limits)` builds the local pool."""

    def __init__(self, service, shard: int, fallback: Callable[[dict], object], *, slots: int = GRANT_BATCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._service, self._shard, self._fallback = service, shard, fallback
        # The next lease is asked for (without waiting) while fewer grants are held than the shard has
        # calls in flight: a whole round of calls ending at once finds a grant for each, and never waits
        # a round trip to the service (where the service limits the rate, it grants fewer; see `service`).
        self._low_water = max(1, min(MAX_BATCH, slots))
        self._batch, self._clock = max(GRANT_BATCH, self._low_water), clock
        self._grants: dict[str, deque] = {}          # model -> (endpoint, reserved, send at, rpm), in time order
        self._reports: list = []
        self._reported_at = clock()
        self._ask_at: dict[str, float] = {}          # model -> no lease before this time
        self._none_for: set[str] = set()             # models no enabled endpoint serves
        self._flags = {"down": False, "unavailable": False, "disabled": False}
        self._leased: Counter = Counter()            # calls in flight on grants, per endpoint
        self._disabled: set[str] = set()
        self._snapshot: list[dict] = []
        self._snapshot_at = -SNAPSHOT_EVERY_S
        self._snapshot_call = None
        self._pending = None                         # (model, est, asked at, call) of a lease on its way
        self.local = None                            # the fallback pool, once the service is lost

    # -- choosing -------------------------------------------------------------------------------

    def acquire(self, model: str, est_tokens: int) -> str | None:
        if self.local is not None:
            return self.local.acquire(model, est_tokens)
        now = self._clock()
        self._collect(now)
        queue = self._fresh(model, now)
        if len(queue or ()) < self._low_water and self._pending is None and now >= self._ask_at.get(model, -1.0):
            self._lease(model, est_tokens, now)
            self._collect(now)
        if self.local is not None:
            return self.local.acquire(model, est_tokens)
        queue = self._grants.get(model)
        if not queue or queue[0][2] > now:
            return None
        name = queue.popleft()[0]
        self._leased[name] += 1
        return name

    def wait_time(self, model: str, est_tokens: int) -> float | None:
        if self.local is not None:
            return self.local.wait_time(model, est_tokens)
        now = self._clock()
        self._flush_if_due(now)
        self._collect(now)
        if self.local is not None:
            return self.local.wait_time(model, est_tokens)
        queue = self._fresh(model, now)
        if queue:
            return max(0.0, queue[0][2] - now)
        if self._pending is not None:
            return PENDING_POLL_S
        if model in self._none_for:
            return None
        return min(MAX_POLL_S, max(0.0, self._ask_at.get(model, now) - now))

    def _fresh(self, model: str, now: float) -> deque | None:
        """The model's grants, the stale ones given back first."""
        queue = self._grants.get(model)
        while queue and now - queue[0][2] > GRANT_TTL_S:
            name, reserved, *_ = queue.popleft()
            self._reports.append(("return", name, reserved))
        return queue

    def _lease(self, model: str, est: int, now: float) -> None:
        """Ask for grants (the outcomes to report go with the request); the answer is collected later."""
        reports, self._reports = self._reports, []
        try:
            self._pending = (model, est, now, start_call(self._service, "lease", self._shard, model, est, self._batch, reports))
        except ServiceLost as err:
            self._lose(err)
            return
        self._reported_at = now

    def _collect(self, now: float) -> None:
        """Take in the answer of the lease on its way, if it has come."""
        if self._pending is None or self.local is not None:
            return
        model, est, asked, call = self._pending
        try:
            if not call.ready():
                return
            reply = call.result()
        except ServiceLost as err:
            self._pending = None
            self._lose(err)
            return
        self._pending = None
        self._apply(model, est, reply, asked, now)

    def _apply(self, model: str, est: int, reply: dict, asked: float, now: float) -> None:
        """Take in a lease's answer. A grant's delay counts from when the lease was asked for: the
        service booked it a one-way trip later, so the shard's slots keep the service's spacing,
        not the spacing of the moments this manager happened to collect the answers."""
        self._flags = {k: bool(reply.get(k)) for k in self._flags}
        rates = reply.get("rates") or {}
        self._recall(rates, now)
        grants = reply.get("grants") or []
        self._grants.setdefault(model, deque()).extend((name, est, asked + delay, rates.get(name))
                                                       for name, delay in grants)
        wait = reply.get("wait")
        if wait is None:
            self._none_for.add(model)
        else:
            self._none_for.discard(model)
        self._ask_at[model] = now + (0.0 if grants else min(MAX_POLL_S, max(0.005, wait or 0.0)))

    def _recall(self, rates: dict, now: float) -> None:
        """Give back the grants not yet due that were booked at a rate a 429 has since cut deeply:
        sent, most would draw 429s (the opening, when the first cuts come from 3× the real limit)."""
        for model, queue in self._grants.items():
            keep = deque()
            for grant in queue:
                name, reserved, at, rpm = grant
                cut = rates.get(name)
                if at > now and rpm is not None and cut is not None and cut < RECALL_BELOW * rpm:
                    self._reports.append(("return", name, reserved))
                else:
                    keep.append(grant)
            self._grants[model] = keep

    # -- ending a call --------------------------------------------------------------------------

    def slot(self, name: str) -> float:
        """When the request just acquired should leave: now (a grant is held until its time)."""
        return 0.0

    awake_s = slot   # no slot, so no time awake before it: 0.0

    def begin(self) -> None:
        """Traffic starts now: nothing to do (the service books every grant's time)."""

    def release(self, name: str, *, ok: bool, reserved_tokens: int, used_tokens: int | None = None,
                headers=None) -> None:
        if self._ended_leased(name):
            self._queue(("release", name, ok, reserved_tokens, used_tokens, dict(headers or {})), urgent=False)
        else:
            self.local.release(name, ok=ok, reserved_tokens=reserved_tokens, used_tokens=used_tokens, headers=headers)

    def rate_limited(self, name: str, retry_after: float | None, reserved_tokens: int) -> None:
        if self._ended_leased(name):
            # Grants already held stay: the service granted them within its budget, and giving them back
            # would spend their request slots for nothing; the cut shows in the next lease.
            self._queue(("429", name, retry_after, reserved_tokens), urgent=True)
        else:
            self.local.rate_limited(name, retry_after, reserved_tokens)

    def failed(self, name: str, reserved_tokens: int, *, transient: bool) -> None:
        if self._ended_leased(name):
            self._queue(("failed", name, reserved_tokens, transient), urgent=transient)
        else:
            self.local.failed(name, reserved_tokens, transient=transient)

    def _ended_leased(self, name: str) -> bool:
        """True when the call ran on a grant (its outcome goes to the service, or nowhere if lost)."""
        if self._leased[name] <= 0:
            if self.local is None:
                raise ValueError(f"endpoint {name!r} has no call in flight")
            return False
        self._leased[name] -= 1
        return True

    def _queue(self, report: tuple, urgent: bool) -> None:
        if self.local is not None:
            return   # the service is gone; the fallback pool never saw this call
        self._reports.append(report)
        if urgent:
            self.flush()

    def _flush_if_due(self, now: float) -> None:
        if self._reports and now - self._reported_at >= REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the buffered reports now."""
        if self.local is not None or not self._reports:
            return
        reports, self._reports = self._reports, []
        self._reported_at = self._clock()
        try:
            self._service.report(self._shard, reports)
        except ServiceLost as err:
            self._lose(err)

    def close(self) -> None:
        """Give every unused grant back and send what is left to report."""
        for queue in self._grants.values():
            self._reports.extend(("return", name, reserved) for name, reserved, *_ in queue)
            queue.clear()
        self.flush()

    # -- losing the service ---------------------------------------------------------------------

    def _lose(self, err: Exception) -> None:
        learned = {row["name"]: row.get("current_rpm") for row in self._snapshot}
        self.local = self._fallback(learned)
        for name in self._disabled:
            self.local.disable(name, "disabled by the shared budget before it was lost")
        log.warning("shard %d: the shared rate budget is lost (%s); going on alone with a conservative "
                    "share of every limit", self._shard, err)

    # -- state ----------------------------------------------------------------------------------

    def disable(self, name: str, reason: str) -> bool:
        if self.local is not None:
            return self.local.disable(name, reason)
        if name in self._disabled:
            return False
        self._disabled.add(name)
        self._queue(("disable", name, reason), urgent=True)
        return True

    def all_disabled(self, model: str | None = None) -> bool:
        if self.local is not None:
            return self.local.all_disabled(model)
        return self._flags["disabled"] and (model is None or model in self._none_for)

    def all_unavailable(self) -> bool:
        return self.local.all_unavailable() if self.local is not None else self._flags["unavailable"]

    def all_down(self) -> bool:
        return self.local.all_down() if self.local is not None else self._flags["down"]

    def in_flight(self, name: str) -> int:
        return self._leased[name] + (self.local.in_flight(name) if self.local is not None else 0)

    def snapshot(self) -> list[dict]:
        """The service's figures, about once a second; asked without waiting (the last answer is shown)."""
        if self.local is not None:
            return self.local.snapshot()
        now = self._clock()
        try:
            if self._snapshot_call is not None and self._snapshot_call.ready():
                self._snapshot, self._snapshot_call = self._snapshot_call.result(), None
            if self._snapshot_call is None and now - self._snapshot_at >= SNAPSHOT_EVERY_S:
                self._snapshot_at = now
                self._snapshot_call = start_call(self._service, "snapshot")
                if self._snapshot_call.ready():   # an in-process service answers at once
                    self._snapshot, self._snapshot_call = self._snapshot_call.result(), None
        except ServiceLost as err:
            self._lose(err)
            return self.local.snapshot()
        return self._snapshot
