"""What comes of a call: an answer goes to the writer; a failure is retried, cools the endpoint,
disables the key or ends the row in the errors file; a call lost with its worker is retried.

Every call that `KeyPool.acquire` started is ended here, exactly once.
"""
from __future__ import annotations

import logging

from ..config import RunConfig
from ..errors import AuthError, ConnectError, RateLimitError, from_info
from ..outputs import records
from . import retry
from .backlog import Backlog
from .flights import Flight
from .job import Item, Job
from .keypool import KeyPool

log = logging.getLogger(__name__)


class Outcomes:
    """Turns outcomes into writes, retries and error rows for the jobs of one round."""

    def __init__(self, cfg: RunConfig, jobs: list[Job], keypool: KeyPool, backlog: Backlog, observer,
                 iteration: int | None) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.keypool = keypool
        self.backlog = backlog
        self.observer = observer
        self.iteration = iteration
        self.policy = retry.RetryPolicy(max_retries=cfg.max_retries, base_delay=cfg.retry_base,
                                        max_delay=cfg.retry_max)

    def handle(self, outcome, flight: Flight) -> None:
        item = flight.item
        item.attempts += 1
        if outcome.completion is not None:
            self._succeeded(flight, outcome)
        else:
            self._failed(flight, from_info(outcome.error))

    def _succeeded(self, flight: Flight, outcome) -> None:
        c = outcome.completion
        used = (c.usage or {}).get("total_tokens")
        self.keypool.release(flight.endpoint, ok=True, reserved_tokens=flight.reserved,
                             used_tokens=used, headers=c.headers)
        item, job = flight.item, self.jobs[flight.item.job]
        self.observer.answered(item.job, outcome.latency_s, c.usage)
        record = records.result_record(item.row, c, model=job.model, latency=outcome.latency_s,
                                       attempts=item.attempts, endpoint=flight.endpoint, iteration=self.iteration)
        job.writer.add_result(item.row.key, item.row.end_offset,
                              records.with_samples(record, c.samples, self.cfg.explode_samples))

    def _failed(self, flight: Flight, err) -> None:
        item = flight.item
        delay = None
        if isinstance(err, RateLimitError):
            self.keypool.rate_limited(flight.endpoint, err.retry_after, flight.reserved)
            delay = 0.0  # the endpoint's cooldown does the waiting; any other endpoint may take it now
        elif isinstance(err, AuthError):
            self.keypool.failed(flight.endpoint, flight.reserved, transient=False)  # ends the call
            if self.keypool.disable(flight.endpoint, f"HTTP {err.status}: key rejected"):
                log.error("endpoint %s: key rejected (HTTP %s); disabled for this run", flight.endpoint, err.status)
            delay = 0.0
        elif isinstance(err, ConnectError):
            self.keypool.failed(flight.endpoint, flight.reserved, transient=True)
            delay = retry.backoff(self.policy, min(item.attempts, 6))
        else:
            transient = retry.classify(err) is retry.Action.RETRY
            if transient:
                self.keypool.failed(flight.endpoint, flight.reserved, transient=True)
            else:
                self.keypool.release(flight.endpoint, ok=False, reserved_tokens=flight.reserved)
            item.retries += 1
            if transient and item.retries <= self.policy.max_retries:
                delay = retry.backoff(self.policy, item.retries, getattr(err, "retry_after", None))
        item.history.append({"attempt": item.attempts, "endpoint": flight.endpoint, "status": getattr(err, "status", None),
                             "error": type(err).__name__, "message": str(err)[:300],
                             "retry_in_s": None if delay is None else round(delay, 3)})
        if delay is None:
            self._give_up(item, err)
        else:
            self.backlog.schedule(item, delay)

    def lost(self, flight: Flight) -> None:
        """A worker died holding this call: count it as a failed attempt and retry."""
        item = flight.item
        item.attempts += 1
        item.retries += 1
        self.keypool.failed(flight.endpoint, flight.reserved, transient=False)
        item.history.append({"attempt": item.attempts, "endpoint": flight.endpoint, "status": None,
                             "error": "WorkerDied", "message": "the worker process died during the call"})
        if item.retries <= self.policy.max_retries:
            self.backlog.schedule(item, 0.0)
        else:
            self._give_up(item, RuntimeError("worker process died on every attempt"))

    def _give_up(self, item: Item, err) -> None:
        job = self.jobs[item.job]
        log.warning("row %s (line %d) failed for good after %d attempt(s): %s", item.row.id,
                    item.row.key, item.attempts, err)
        job.writer.add_error(item.row.key, item.row.end_offset, records.error_record(
            item.row, err, model=job.model, attempts=item.attempts, history=item.history,
            iteration=self.iteration))
