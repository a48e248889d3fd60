"""The manager loop: read rows, choose an endpoint, dispatch, hand outcomes on, until done or stopped.

All scheduling state (next row, endpoint budgets, retry timers, in-flight table, stop requests)
lives in the manager, in one process and one thread. Workers only execute; the writer only
persists; `report/` turns the facts this loop exposes (`view`) into status, progress and summary.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

from ..config import RunConfig
from ..errors import CheckpointError, MpdistillError, RunAbortedError
from ..state.resume import next_round
from .backlog import Backlog
from .flights import Flight, InFlight
from .outage import OutageWatch
from .intake import Intake
from .job import Item, Job, estimate_tokens
from .keypool import KeyPool
from .outcomes import Outcomes
from .pool import WorkerPool
from .request import build_request
from .ratelimit import Meter
from .stopping import Stopper
from .view import RunView, job_counts, workers
from .worker import Task, WorkerSpec

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0
FIRST_WORKER_WAIT_S = 2.0   # at most this long for the first worker to say it is ready


class Runner:
    """Runs one round of the rows through the worker pool for every job, until done or stopped.

    `observer` hears of every call that ended (`request`), of rows made durable (`durable`) and,
    about once a second and at the end, of the run's state (`tick`): see `report.reporter.Reporter`.
    """

    def __init__(self, cfg: RunConfig, jobs: list[Job], rows: Iterator, keypool: KeyPool,
                 spec: WorkerSpec, observer, *, source, total: int | None = None,
                 status_file: Path | None = None, elapsed_before: float = 0.0,
                 iteration: int | None = None, last_round: bool = True, cache=None) -> None:
        self.cfg, self.jobs, self.keypool, self.observer = cfg, jobs, keypool, observer
        self.source = source                  # the Source protocol: status fields, why following ended
        self.cache = cache                    # engine.cached.RunCache, or None
        self.flights = InFlight()
        self.pool = WorkerPool(spec, cfg.processes, self.flights)
        self.backlog = Backlog()
        self.intake = Intake(rows, jobs, limit=cfg.limit, iteration=iteration)
        self.outcomes = Outcomes(cfg, jobs, keypool, self.backlog, observer, iteration, cache)
        self.health = OutageWatch(keypool, cfg.max_outage, self.outcomes.health)
        self.total, self.status_file = total, status_file
        self.elapsed_before = elapsed_before
        self.iteration = iteration            # the round of a repeated run (--iterations), else None
        self.last_round = last_round
        self.already_done = sum(j.checkpoint.processed_count for j in jobs)
        self._before = [(j.checkpoint.ok, j.checkpoint.failed) for j in jobs]
        self._counted = self._durable_rows()  # durable rows the rate meter has seen
        self.complete = False                 # every row of the input (this round) is done
        self._tids = iter(range(1, 1 << 62))
        self._stop = Stopper(cfg.grace, status_file)
        self._abort: str | None = None
        self._started = time.monotonic()
        self._meter = Meter(start=self._started)
        self._status_at = 0.0
        self._forked = False                  # the last dispatch stopped early, after starting a worker
        self.started_at = time.time()

    # ---- life cycle -------------------------------------------------------------------------

    def run(self) -> str:
        """Run to the end; returns the final state: finished, stopped or interrupted."""
        self._stop.install(lambda: len(self.flights))
        for job in self.jobs:
            job.writer.start()
        try:
            self._loop()
        finally:
            self._stop.restore()
            self._shutdown()
        if self._abort:
            raise RunAbortedError(self._abort)
        if self._stop:
            return "stopped" if self._stop.by_request else "interrupted"
        return "finished"

    def request_stop(self, reason: str = "stop requested", now: bool = False) -> None:
        """Stop dispatching; in-flight calls may finish within the grace period (or not, with now)."""
        self._stop.request(reason, now, len(self.flights))

    def _shutdown(self) -> None:
        """Persist everything already answered, stop the workers, save (or clear) the checkpoints."""
        idle = self._idle()
        try:
            for job in self.jobs:
                job.checkpoint.elapsed = self.elapsed()
                try:
                    job.writer.stop()
                except MpdistillError as err:
                    log.error("%s", err)
                    self._abort = self._abort or str(err)
            self._collect(raise_errors=False)
        finally:
            if self._stop.now or self._abort:
                self.pool.kill()
            else:
                self.pool.close(grace=1.0)
        self.complete = (self.intake.exhausted and not self.intake.limited and not self._stop
                         and not self._abort and idle)
        for job in self.jobs:
            self._save_checkpoint(job, clear=self.complete)
        self.observer.tick(self.view("finished" if self.complete else ("stopped" if self._stop else "aborted")))

    def _save_checkpoint(self, job: Job, clear: bool) -> None:
        job.checkpoint.meta.update(self.source.checkpoint_fields())
        if clear and self.last_round:
            job.checkpoint.clear()
            return
        if clear:
            next_round(job.checkpoint)
        job.checkpoint.elapsed = self.elapsed()
        try:
            job.checkpoint.save()
        except CheckpointError as err:
            log.error("%s (the output is intact; the next run rebuilds from it)", err)

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._started

    # ---- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._done():
            now = time.monotonic()
            self.backlog.release(now)
            if not self._stop:
                self._dispatch()
            if self._done():
                break
            outcomes, lost = self.pool.wait(self._wait_for(now))
            if outcomes and not self._stop:
                self._dispatch()   # the pool freed their slots: refill them before the bookkeeping
            for outcome, flight in outcomes:
                self.outcomes.handle(outcome, flight)
            for flight in lost:
                self.outcomes.lost(flight)
            self._collect()
            self._abort = self._abort or self.health.check()
            self._tick()

    def _done(self) -> bool:
        if self._abort or self._stop.now:
            return True
        if self._stop:
            return not self.flights or self._stop.past_grace()
        return self.intake.exhausted and self._idle()

    def _idle(self) -> bool:
        return not self.flights and not self.backlog

    def _wait_for(self, now: float) -> float:
        """How long the loop may sleep: until the next retry timer, budget refill or status tick."""
        if self._forked:
            return 0.0   # dispatch paused after starting a worker: only read what came back meanwhile
        wake = [STATUS_EVERY_S, 0.5]
        due = self.backlog.next_due()
        if due is not None:
            wake.append(due - now)
        if self.backlog.ready and self.pool.free_slots():
            item = self.backlog.ready[0]
            wait = self.keypool.wait_time(self.jobs[item.job].model, self._estimate(item))
            wake.append(wait if wait is not None else 0.5)
        return max(0.0, min(wake))

    # ---- dispatch ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Fill free slots while the key pool allows. Starting a worker (a fork, milliseconds) ends the
        round, so outcomes are read between forks: a 429 slows the rate at once, not after 64 forks."""
        self._forked = False
        while self.pool.free_slots() > 0:
            item = self._next_item()
            if item is None:
                return
            if self.cache is not None and self.cache.serve(self.jobs[item.job], item.row, self.iteration):
                continue
            model, est = self.jobs[item.job].model, self._estimate(item)
            endpoint = self.keypool.acquire(model, est)
            if endpoint is None:
                self.backlog.push_front(item)
                if self.keypool.wait_time(model, est) is None:
                    self._abort = (f"no usable endpoint for model {model!r}: every key that serves it "
                                   "is disabled (see the log); checkpoint saved, rerun to resume")
                return
            tid = next(self._tids)
            job = self.jobs[item.job]
            request = build_request(job.model, job.params, job.system, item.row.request)
            started = self.pool.started
            task = Task(tid, endpoint, request, self.keypool.slot(endpoint), self.keypool.awake_s(endpoint))
            self.pool.submit(task, Flight(tid, item, endpoint, est))
            if self.pool.started != started:
                if not started:   # rates count from when the first worker takes tasks: no start-up burst
                    self.pool.wait_ready(FIRST_WORKER_WAIT_S)
                    self.keypool.begin()
                self._forked = True
                return

    def _next_item(self) -> Item | None:
        item = self.backlog.pop()
        if item is None and not self.intake.exhausted:
            for fresh in self.intake.next_items():
                self.backlog.schedule(fresh, 0.0)
            item = self.backlog.pop()
            if self.intake.exhausted and self.source.follow_stopped:
                self._stop.asked(f"stopped following the input: {self.source.follow_stopped}",
                                 in_flight=len(self.flights))
        return item

    def _estimate(self, item: Item) -> int:
        return estimate_tokens(self.jobs[item.job], item.row)

    # ---- durability and status --------------------------------------------------------------

    def _durable_rows(self) -> int:
        return sum(j.checkpoint.ok + j.checkpoint.failed for j in self.jobs)

    def _collect(self, raise_errors: bool = True) -> None:
        """Take in what the writers made durable; a writer's failure stops the run."""
        elapsed = self.elapsed()
        for job in self.jobs:
            if job.writer.error is not None and raise_errors:
                raise job.writer.error
            job.checkpoint.elapsed = elapsed
        durable = self._durable_rows()
        if durable != self._counted:
            self._meter.add(time.monotonic(), durable - self._counted)
            self._counted = durable
            self.observer.durable(job_counts(self.jobs, self._before))

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self.observer.tick(self.view(self._live_state()))
            self._stop.check_file(len(self.flights))

    def _live_state(self) -> str:
        if self._stop:
            return "stopping"
        if self.intake.waiting_input and self._idle():
            return "waiting for input"
        return "running"

    def view(self, state: str) -> RunView:
        """The facts of the run now, for `report/`."""
        return RunView(
            run=self.cfg.name, state=state, input=self.cfg.input, output=str(self.cfg.output_path),
            total=self.total * len(self.jobs) if self.total is not None else None,
            jobs=job_counts(self.jobs, self._before), in_flight=len(self.flights),
            retry_waiting=self.backlog.waiting, rows_per_s=self._meter.rpm(time.monotonic()) / 60.0,
            elapsed_s=self.elapsed(), round_s=time.monotonic() - self._started,
            already_done=self.already_done, started_at=self.started_at, iteration=self.iteration,
            workers=workers(self.flights, self.pool.pids()), endpoints=tuple(self.keypool.snapshot()),
            source=self.source.status_fields(), status_extra=self._cache_figures(),
            summary_extra=self._cache_figures())

    def _cache_figures(self) -> dict:
        return {} if self.cache is None else {"cache": self.cache.run_figures(self.jobs)}
