"""What comes of a call: an answer goes to the writer; a failure is judged by `retry.decide` and
retried, ends the row in the errors file, cools the endpoint or disables the key; a call lost with
its worker is a failed attempt like any other.

Every call that `KeyPool.acquire` started is ended here, exactly once, and reported to the
observer as one `RequestEvent`.
"""
from __future__ import annotations

import logging
import time

from ..config import RunConfig
from ..errors import WorkerLostError, from_info
from ..outputs import records
from ..report.observe import RequestEvent
from . import retry
from .backlog import Backlog
from .flights import Flight
from .health import Health
from .job import Item, Job
from .keypool import KeyPool

log = logging.getLogger(__name__)


class Outcomes:
    """Turns outcomes into writes, retries and error rows for the jobs of one round."""

    def __init__(self, cfg: RunConfig, jobs: list[Job], keypool: KeyPool, backlog: Backlog, observer,
                 iteration: int | None, cache=None) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.keypool = keypool
        self.backlog = backlog
        self.observer = observer
        self.iteration = iteration
        self.cache = cache                  # engine.cached.RunCache: each new answer is stored
        self.policy = retry.RetryPolicy(max_retries=cfg.max_retries, base_delay=cfg.retry_base,
                                        max_delay=cfg.retry_max)
        self.health = Health()

    def handle(self, outcome, flight: Flight) -> None:
        flight.item.attempts += 1
        if outcome.completion is not None:
            self._succeeded(flight, outcome)
        else:
            self._failed(flight, from_info(outcome.error), outcome.latency_s)

    def lost(self, flight: Flight) -> None:
        """A worker died holding this call: a failed attempt like any other."""
        flight.item.attempts += 1
        self._failed(flight, WorkerLostError("the worker process died during the call"))

    def _succeeded(self, flight: Flight, outcome) -> None:
        c = outcome.completion
        used = (c.usage or {}).get("total_tokens")
        self.keypool.release(flight.endpoint, ok=True, reserved_tokens=flight.reserved,
                             used_tokens=used, headers=c.headers)
        self.health.succeeded(flight.endpoint)
        item, job = flight.item, self.jobs[flight.item.job]
        self._observe(flight, outcome.latency_s, 200, completion=c)
        record = records.result_record(item.row, c, model=job.model, latency=outcome.latency_s,
                                       attempts=item.attempts, endpoint=flight.endpoint, iteration=self.iteration)
        job.writer.add_result(item.row.key, item.row.end_offset,
                              records.with_samples(record, c.samples, self.cfg.explode_samples))
        if self.cache is not None:
            self.cache.store(job, item.row, c)

    def _failed(self, flight: Flight, err, latency: float | None = None) -> None:
        """Let `retry.decide` say what the failure means, then do it: the keypool, the row."""
        item = flight.item
        self._observe(flight, latency, getattr(err, "status", None), type(err).__name__)
        facts = self.health.failed(flight.endpoint, (item.row.key, item.job), item.marks, type(err).__name__)
        decision = retry.decide(err, retry.Attempt(item.attempts, item.retries, facts.row_fault,
                                                   facts.others_failing), self.policy)
        self._end_call(flight, err, decision)
        item.retries += decision.charged
        item.history.append({"attempt": item.attempts, "endpoint": flight.endpoint, "status": getattr(err, "status", None),
                             "error": type(err).__name__, "message": str(err)[:300],
                             "retry_in_s": None if decision.delay is None else round(decision.delay, 3)})
        if decision.action is retry.Action.FAIL_ROW:
            self._give_up(item, err)
        else:
            self.backlog.schedule(item, decision.delay)

    def _end_call(self, flight: Flight, err, decision: retry.Decision) -> None:
        """Tell the key pool how the call ended, as the decision's verdict says."""
        verdict, name = decision.verdict, flight.endpoint
        if verdict is retry.Verdict.RATE_LIMITED:
            self.keypool.rate_limited(name, err.retry_after, flight.reserved)
        elif verdict is retry.Verdict.ANSWERED:
            self.keypool.release(name, ok=False, reserved_tokens=flight.reserved)
        else:
            self.keypool.failed(name, flight.reserved, transient=verdict is retry.Verdict.DOWN)
        if verdict is retry.Verdict.DOWN:
            self.health.down(name, err)
        if decision.action is retry.Action.DISABLE_KEY and self.keypool.disable(name, f"HTTP {err.status}: key rejected"):
            log.error("endpoint %s: key rejected (HTTP %s) for several rows; disabled for this run", name, err.status)

    def _give_up(self, item: Item, err) -> None:
        job = self.jobs[item.job]
        log.warning("row %s (line %d) failed for good after %d attempt(s): %s", item.row.id,
                    item.row.key, item.attempts, err)
        job.writer.add_error(item.row.key, item.row.end_offset, records.error_record(
            item.row, err, model=job.model, attempts=item.attempts, history=item.history,
            iteration=self.iteration))

    def _observe(self, flight: Flight, latency: float | None, status: int | None, error: str | None = None,
                 completion=None) -> None:
        """Tell the observer (the reporter: figures, metrics, traces, endpoint logs) how one call ended."""
        item, job = flight.item, self.jobs[flight.item.job]
        self.observer.request(RequestEvent(
            run=self.cfg.name, model=job.model, endpoint=flight.endpoint, row_id=str(item.row.id),
            line=item.row.key, attempt=item.attempts, status=status, error=error,
            latency_s=time.time() - flight.sent_at if latency is None else latency, ended_at=time.time(),
            usage=completion.usage if completion else None, request=item.row.request,
            answer=completion.answer if completion else None, job=job.alias))
