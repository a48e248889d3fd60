"""The manager loop: read rows, choose an endpoint, dispatch, schedule retries, hand results to the writer.

All scheduling state (next row, endpoint budgets, retry timers, in-flight table, stop requests)
lives here, in one process and one thread. Workers only execute; the writer only persists.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..outputs import records
from . import retry
from ..state.checkpoint import CheckpointManager
from ..config import RunConfig
from ..state.stopfile import check_stop
from ..state.resume import next_round
from ..errors import CheckpointError, MpdistillError, RunAbortedError, WorkerLostError, from_info
from .health import Health
from .keypool import KeyPool
from .request import build_request
from .pool import WorkerPool
from ..inputs.jsonl import BadRow, Blank, Idle, Row
from ..report.observe import Observers, RequestEvent
from ..report.stats import ModelStats, RateMeter, build_summary
from ..report.status import write_status
from .worker import Task, WorkerSpec
from .writer import Writer

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0


@dataclass
class Job:
    """One model's share of the run: its own output, errors file and checkpoint."""

    alias: str
    model: str
    writer: Writer
    checkpoint: CheckpointManager
    params: dict = field(default_factory=dict)
    system: str | None = None
    prices: tuple | None = None    # per million input / output tokens, for the cost in the summary
    stats: ModelStats = field(default_factory=ModelStats)
    seen_ok: int = 0          # durable rows already counted in progress
    seen_failed: int = 0

    def __post_init__(self) -> None:
        self.stats.prices = self.prices


@dataclass
class Item:
    """A (row, job) pair on its way: waiting, in flight, or waiting for a retry."""

    row: Row
    job: int
    attempts: int = 0        # calls made
    retries: int = 0         # calls that count against --max-retries
    history: list = field(default_factory=list)
    marks: dict = field(default_factory=dict)   # Health's memory of where this row began failing


@dataclass
class Flight:
    item: Item
    endpoint: str
    reserved: int
    started: float


class Runner:
    """Runs the rows of `rows` through the worker pool for every job, until done or stopped."""

    def __init__(self, cfg: RunConfig, jobs: list[Job], rows: Iterator, keypool: KeyPool,
                 spec: WorkerSpec, *, total: int | None = None, status_file: Path | None = None,
                 progress: Callable | None = None, elapsed_before: float = 0.0,
                 iteration: int | None = None, last_round: bool = True, source=None,
                 observer: Observers | None = None, cache=None) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.rows = rows
        self.keypool = keypool
        self.pool = WorkerPool(spec, cfg.processes)
        self.policy = retry.RetryPolicy(max_retries=cfg.max_retries, base_delay=cfg.retry_base,
                                        max_delay=cfg.retry_max)
        self.health = Health()
        self.total = total
        self.status_file = status_file
        self.progress = progress
        self.elapsed_before = elapsed_before
        self.iteration = iteration            # the round of a repeated run (--iterations), else None
        self.last_round = last_round
        self.already_done = sum(j.checkpoint.processed_count for j in jobs)
        self.complete = False                 # every row of the input (this round) is done
        self.source = source                  # for status: numbered-file position, what --follow waits for
        self.observer = observer if observer is not None else Observers()   # metrics, traces, endpoint logs
        self.cache = cache                    # engine.cached.RunCache, or None
        self._waiting_input = False
        self._ready: deque[Item] = deque()
        self._timers: list = []          # (due, seq, item): retries waiting out a backoff
        self._flights: dict[int, Flight] = {}
        self._tids = itertools.count(1)
        self._seq = itertools.count()
        self._taken = 0                  # rows taken from the source (for --limit)
        self._exhausted = False
        self._limited = False            # stopped reading at --limit: the input is not complete
        self._stop: str | None = None
        self._stop_now = False
        self._stop_by_request = False    # --stop (exit 0) rather than a signal (exit 130)
        self._stop_deadline: float | None = None
        self._outage_since: float | None = None
        self._abort: str | None = None
        self._meter = RateMeter()
        self._status_at = 0.0
        self._started = time.monotonic()
        self.started_at = time.time()

    # ---- life cycle -------------------------------------------------------------------------

    def run(self) -> str:
        """Run to the end; returns the final state: finished, interrupted or aborted."""
        previous = self._install_signals()
        for job in self.jobs:
            job.writer.start()
        try:
            self._loop()
        finally:
            self._restore_signals(previous)
            self._shutdown()
        if self._abort:
            raise RunAbortedError(self._abort)
        if self._stop:
            return "stopped" if self._stop_by_request else "interrupted"
        return "finished"

    def request_stop(self, reason: str = "stop requested", now: bool = False) -> None:
        """Stop dispatching; in-flight calls may finish within the grace period (or not, with now)."""
        if self._stop and not now:
            now = True  # a second request means: stop at once
        if not self._stop:
            log.warning("%s: no new requests; waiting up to %.0f s for %d in flight", reason,
                        self.cfg.grace, len(self._flights))
            self._stop = reason
            self._stop_deadline = time.monotonic() + self.cfg.grace
        if now:
            self._stop_now = True

    def _install_signals(self):
        if not _main_thread():
            return None
        handler = lambda signum, frame: self.request_stop(signal.Signals(signum).name)
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(previous) -> None:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)

    def _shutdown(self) -> None:
        """Persist everything already answered, stop the workers, save (or clear) the checkpoints."""
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
            if self._stop_now or self._abort:
                self.pool.kill()
            else:
                self.pool.close(grace=1.0)
        complete = (self._exhausted and not self._limited and not self._stop and not self._abort
                    and self._idle())
        self.complete = complete
        for job in self.jobs:
            self._save_checkpoint(job, clear=complete)
        self._write_status("finished" if complete else ("stopped" if self._stop else "aborted"))

    def _save_checkpoint(self, job: Job, clear: bool) -> None:
        if getattr(self.source, "last_number", None) is not None:
            job.checkpoint.meta["last_number"] = self.source.last_number
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
            self._release_timers(now)
            if not self._stop:
                self._dispatch()
            if self._done():
                break
            outcomes, lost = self.pool.wait(self._wait_for(now))
            if outcomes and not self._stop:
                self._dispatch()   # the pool freed their slots: refill them before the bookkeeping
            for outcome in outcomes:
                self._handle(outcome)
            for tid in lost:
                self._lost(tid)
            self._collect()
            self._check_health()
            self._tick()

    def _done(self) -> bool:
        if self._abort or self._stop_now:
            return True
        if self._stop:
            return not self._flights or time.monotonic() > self._stop_deadline
        return self._exhausted and self._idle()

    def _idle(self) -> bool:
        return not self._flights and not self._ready and not self._timers

    def _wait_for(self, now: float) -> float:
        """How long the loop may sleep: until the next retry timer, budget refill or status tick."""
        wake = [STATUS_EVERY_S, 0.5]
        if self._timers:
            wake.append(self._timers[0][0] - now)
        if self._ready and self.pool.free_slots():
            wait = self.keypool.wait_time(self._model_of(self._ready[0]), self._estimate(self._ready[0]))
            wake.append(wait if wait is not None else 0.5)
        return max(0.0, min(wake))

    # ---- dispatch ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self.pool.free_slots() > 0:
            item = self._next_item()
            if item is None:
                return
            if self.cache is not None and self.cache.serve(self.jobs[item.job], item.row, self.iteration):
                continue
            model, est = self._model_of(item), self._estimate(item)
            endpoint = self.keypool.acquire(model, est)
            if endpoint is None:
                self._ready.appendleft(item)
                if self.keypool.wait_time(model, est) is None:
                    self._abort = (f"no usable endpoint for model {model!r}: every key that serves it "
                                   "is disabled (see the log); checkpoint saved, rerun to resume")
                return
            self._send(item, endpoint, est)

    def _send(self, item: Item, endpoint: str, reserved: int) -> None:
        tid = next(self._tids)
        job = self.jobs[item.job]
        request = build_request(job.model, job.params, job.system, item.row.request)
        self._flights[tid] = Flight(item, endpoint, reserved, time.monotonic())
        self.pool.submit(Task(tid, endpoint, request))

    def _next_item(self) -> Item | None:
        if self._ready:
            return self._ready.popleft()
        while not self._exhausted:
            entry = self._take_row()
            if entry is None:
                return None
            self._ready.extend(Item(entry, i) for i, job in enumerate(self.jobs)
                               if not job.checkpoint.is_done(entry.key))
            if self._ready:
                return self._ready.popleft()
        return None

    def _take_row(self) -> Row | None:
        """The next usable row; bad rows and blank lines are recorded on the way."""
        while True:
            if self.cfg.limit is not None and self._taken >= self.cfg.limit:
                self._exhausted = self._limited = True
                return None
            entry = next(self.rows, None)
            if isinstance(entry, Idle):
                self._waiting_input = True   # --follow: nothing new yet; ask again next loop
                return None
            self._waiting_input = False
            if entry is None:
                self._exhausted = True
                if getattr(self.source, "follow_stopped", None):
                    self._stop_by_request = True
                    self.request_stop(f"stopped following the input: {self.source.follow_stopped}")
                return None
            if isinstance(entry, Blank):
                for job in self.jobs:
                    job.writer.add_mark(entry.key, entry.end_offset)
                continue
            self._taken += 1
            if isinstance(entry, BadRow):
                log.warning("bad row: %s", entry.reason)
                for job in self.jobs:
                    if not job.checkpoint.is_done(entry.key):
                        job.writer.add_error(entry.key, entry.end_offset, records.bad_row_record(entry, self.iteration))
                        job.stats.failed += 1
                continue
            return entry

    def _model_of(self, item: Item) -> str:
        return self.jobs[item.job].model

    def _estimate(self, item: Item) -> int:
        """Tokens to reserve: the prompt's characters / 4 plus the answer's budget."""
        chars = sum(len(str(m.get("content", ""))) for m in item.row.request["messages"])
        job = self.jobs[item.job]
        answer = item.row.request.get("max_tokens") or job.params.get("max_tokens") or 512
        return chars // 4 + int(answer)

    # ---- outcomes ---------------------------------------------------------------------------

    def _handle(self, outcome) -> None:
        flight = self._flights.pop(outcome.tid, None)
        if flight is None:
            return  # an answer for a task already given up (stop --now); it is redone next run
        item = flight.item
        item.attempts += 1
        if outcome.completion is not None:
            self._succeeded(flight, outcome)
        else:
            self._failed(flight, from_info(outcome.error), outcome.latency_s)

    def _succeeded(self, flight: Flight, outcome) -> None:
        c = outcome.completion
        used = (c.usage or {}).get("total_tokens")
        self.keypool.release(flight.endpoint, ok=True, reserved_tokens=flight.reserved,
                             used_tokens=used, headers=c.headers)
        self.health.succeeded(flight.endpoint)
        item, job = flight.item, self.jobs[flight.item.job]
        self._observe(flight, outcome.latency_s, 200, completion=c)
        job.stats.ok += 1
        job.stats.latency.add(outcome.latency_s)
        job.stats.add_usage(c.usage)
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
            self._schedule(item, decision.delay)

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

    def _observe(self, flight: Flight, latency: float | None, status: int | None, error: str | None = None,
                 completion=None) -> None:
        """Tell the observers (metrics, traces, endpoint logs) how one call ended."""
        if not self.observer:
            return
        item, job = flight.item, self.jobs[flight.item.job]
        self.observer.request(RequestEvent(
            run=self.cfg.name, model=job.model, endpoint=flight.endpoint, row_id=str(item.row.id),
            line=item.row.key, attempt=item.attempts, status=status, error=error,
            latency_s=time.monotonic() - flight.started if latency is None else latency, ended_at=time.time(),
            usage=completion.usage if completion else None, request=item.row.request,
            answer=completion.answer if completion else None))

    def _schedule(self, item: Item, delay: float) -> None:
        if delay <= 0:
            self._ready.append(item)
        else:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), item))

    def _release_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            self._ready.append(heapq.heappop(self._timers)[2])

    def _lost(self, tid: int) -> None:
        """A worker died holding this task: a failed attempt like any other."""
        flight = self._flights.pop(tid, None)
        if flight is None:
            return
        flight.item.attempts += 1
        self._failed(flight, WorkerLostError("the worker process died during the call"))

    def _give_up(self, item: Item, err) -> None:
        job = self.jobs[item.job]
        job.stats.failed += 1
        log.warning("row %s (line %d) failed for good after %d attempt(s): %s", item.row.id,
                    item.row.key, item.attempts, err)
        job.writer.add_error(item.row.key, item.row.end_offset, records.error_record(
            item.row, err, model=job.model, attempts=item.attempts, history=item.history,
            iteration=self.iteration))

    # ---- durability, health, status -----------------------------------------------------------

    def _collect(self, raise_errors: bool = True) -> None:
        """Take in what the writers made durable; a writer's failure stops the run."""
        elapsed = self.elapsed()
        for job in self.jobs:
            if job.writer.error is not None and raise_errors:
                raise job.writer.error
            job.checkpoint.elapsed = elapsed
            ok, failed = job.writer.durable_ok - job.seen_ok, job.writer.durable_failed - job.seen_failed
            if ok or failed:
                job.seen_ok, job.seen_failed = job.writer.durable_ok, job.writer.durable_failed
                self._meter.add(ok + failed)
                if self.progress:
                    self.progress(ok, failed)

    def _check_health(self) -> None:
        """Stop the run when every endpoint has failed every row for longer than --max-outage."""
        if not self.keypool.all_down():  # not all_unavailable: that ends with each cooldown, mid-outage
            if self._outage_since is not None:
                log.warning("endpoints answering again after %.0f s", time.monotonic() - self._outage_since)
            self._outage_since = None
            return
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("every endpoint is %s: pausing and probing (up to %.0f s)", self.health.symptom(),
                        self.cfg.max_outage)
        elif now - self._outage_since > self.cfg.max_outage:
            self._abort = (f"every endpoint has been {self.health.symptom()} for over {self.cfg.max_outage:.0f} s; "
                           "checkpoint saved, rerun to resume")

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self._write_status(self._live_state())
            self._check_stop_file()

    def _live_state(self) -> str:
        if self._stop:
            return "stopping"
        if self._waiting_input and not self._flights and not self._ready and not self._timers:
            return "waiting for input"
        return "running"

    def _check_stop_file(self) -> None:
        if self.status_file is None:
            return
        request = check_stop(self.status_file, os.getpid())
        if request is not None:
            self._stop_by_request = True
            self.request_stop("stop requested (--stop)", now=bool(request.get("now")))

    def status(self, state: str) -> dict:
        """The live figures of the run, as plain data."""
        done = sum(j.checkpoint.processed_count for j in self.jobs)
        ok = sum(j.checkpoint.ok for j in self.jobs)
        failed = sum(j.checkpoint.failed for j in self.jobs)
        total = self.total * len(self.jobs) if self.total is not None else None
        rate = self._meter.rate()
        eta = (total - done) / rate if total is not None and rate > 0 and total >= done else None
        owner = {tid: f for tid, f in self._flights.items()}
        workers = []
        for w in self.pool.worker_states():
            rows = [owner[t].item.row.id for t in w["tids"] if t in owner]
            workers.append({"slot": w["slot"], "pid": w["pid"], "busy": bool(rows), "rows": rows, "since": w["since"]})
        return {"run": self.cfg.name, "state": state, "pid": os.getpid(), "started_at": self.started_at,
                "updated_at": time.time(), "input": self.cfg.input, "output": str(self.cfg.output_path),
                "total": total, "done": done, "ok": ok, "failed": failed, "in_flight": len(self._flights),
                "retry_waiting": len(self._timers), "rows_per_s": round(rate, 3), "eta_s": eta,
                "elapsed_s": round(self.elapsed(), 3),
                "models": {j.alias: {"done": j.checkpoint.processed_count, "ok": j.checkpoint.ok,
                                     "failed": j.checkpoint.failed} for j in self.jobs},
                "workers": workers, "endpoints": self.keypool.snapshot(), **self._source_status(),
                **self._usage_status(), **self.observer.status_fields(),
                **({"cache": self._cache_figures()} if self.cache is not None else {})}

    def _usage_status(self) -> dict:
        """Tokens and cost of this run so far (the summary's figures, live)."""
        costs = [j.stats.cost() for j in self.jobs if j.stats.cost() is not None]
        return {"tokens": {"prompt": sum(j.stats.prompt_tokens for j in self.jobs),
                           "completion": sum(j.stats.completion_tokens for j in self.jobs)},
                "cost": round(sum(costs), 6) if costs else None}

    def _cache_figures(self) -> dict:
        figures = [self.cache.figures(j) for j in self.jobs]
        total = {k: sum(f[k] or 0 for f in figures) for k in ("hits", "misses", "stored", "saved_tokens")}
        costs = [f["saved_cost"] for f in figures if f["saved_cost"] is not None]
        return {**total, "saved_cost": round(sum(costs), 6) if costs else None, "path": figures[0]["path"]}

    def _source_status(self) -> dict:
        """Numbered-file runs: the range and the last number handed out; what --follow waits for."""
        src = self.source
        if src is None or not hasattr(src, "last_number"):
            return {}
        return {"start_number": src.start, "current_number": src.last_number,
                "end_number": src.end, "waiting_for": getattr(src, "waiting_for", None)}

    def _write_status(self, state: str) -> None:
        if self.status_file is None and not self.observer:
            return
        status = self.status(state)
        self.observer.status(status)
        if self.status_file is None:
            return
        try:
            write_status(self.status_file, status)
        except OSError as err:
            log.warning("cannot write status file %s: %s", self.status_file, err)

    def summary(self, state: str, already_done: int) -> dict:
        summary = build_summary({j.alias: j.stats for j in self.jobs}, elapsed=time.monotonic() - self._started,
                                endpoints=self.keypool.snapshot(), state=state, already_done=already_done,
                                outputs={j.alias: str(j.writer.output_path) for j in self.jobs})
        summary["failed_total"] = sum(j.checkpoint.failed for j in self.jobs)  # earlier runs included
        if self.cache is not None:
            summary["cache"] = self._cache_figures()
        return summary



def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
