"""The batch-mode manager: pack rows, submit batches across the endpoints, poll them, collect them.

One thread, no worker pool. Every step that the provider remembers is journaled first
(`state.batches`), so a kill at any point is followed by a rerun that finds each batch again,
creates none twice and writes every answer once. The online `Runner`'s interface (run, view,
complete, and the observer it reports to) is kept, so the engine runs either the same way.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque

from ..errors import CheckpointError, RunAbortedError
from ..inputs.rows import BadRow, Blank, Idle
from ..outputs import records
from ..engine.ratelimit import Meter
from ..engine.view import RunView, job_counts
from ..state.batches import BatchJournal, journal_path
from ..state.stopfile import check_stop
from .lanes import Lanes
from .poll import Poller
from .submit import Submitter

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0


class BatchRunner:
    """Runs one job's rows through the provider's Batch API until done, stopped or aborted."""

    def __init__(self, cfg, jobs, rows, keypool=None, spec=None, observer=None, *, total=None, status_file=None,
                 elapsed_before: float = 0.0, iteration=None, last_round=True,
                 source=None, cache=None) -> None:
        self.cfg, self.job, self.rows = cfg, jobs[0], rows
        self.jobs = jobs
        self.observer = observer
        self.total, self.status_file = total, status_file
        self.elapsed_before = elapsed_before
        self.iteration = None
        self.source = source
        self.cache = cache
        self.already_done = self.job.checkpoint.processed_count
        self.complete = False
        self.journal = BatchJournal(journal_path(self.job.checkpoint.path))
        self.lanes = Lanes(spec.endpoints, max_batches=cfg.batch_max_in_flight, max_tokens=cfg.batch_max_tokens)
        self.submit = Submitter(self, spec)
        self.retry_queue: deque = deque()        # (entry, keys) of closed batches to pack again
        self.poller = Poller(self)
        self.exhausted = False
        self._taken = 0                          # rows taken from the input (for --limit)
        self._limited = False
        self._stop: str | None = None
        self._by_request = False
        self._before = [(self.job.checkpoint.ok, self.job.checkpoint.failed)]
        self._counted = sum(self._before[0])     # durable rows the rate meter has seen
        self._status_at = 0.0
        self._started = time.monotonic()
        self._meter = Meter(start=self._started)
        self.started_at = time.time()
        prices = self.job.prices
        self.online_prices = prices
        if prices:
            factor = cfg.batch_price
            self.job.prices = tuple(None if p is None else p * factor for p in prices)

    # ---- life cycle -------------------------------------------------------------------------

    def run(self) -> str:
        previous = _install_signals(self.request_stop)
        self.job.writer.start()
        try:
            if self.cfg.restart:
                self._set_journal_aside()
            self.journal.load()
            self._reattach()
            self._loop()
        finally:
            _restore_signals(previous)
            self._shutdown()
        if self._stop:
            return "stopped" if self._by_request else "interrupted"
        return "finished"

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop:
            log.warning("%s: no new batches; %d open batch(es) are left for the next run to collect",
                        reason, len(self.journal.open_batches()))
            self._stop = reason

    def _set_journal_aside(self) -> None:
        """--restart: the old job's batches are not this job's; keep their journal as a backup."""
        old = BatchJournal(self.journal.path)
        if not old.path.exists():
            return
        old.load()
        aside = old.path.with_name(f"{old.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        old.path.replace(aside)
        opened = [e.batch_id or e.local for e in old.open_batches()]
        if opened:
            log.warning("--restart: %d batch(es) of the old job are left at the provider (%s); their "
                        "journal is kept as %s", len(opened), ", ".join(opened[:5]), aside.name)

    def _reattach(self) -> None:
        """Batches of earlier runs: count them against their endpoints; drop files of closed ones."""
        for entry in self.journal.open_batches():
            endpoint = self.lanes.find(entry.key_hash)
            if endpoint is not None and endpoint.name != entry.endpoint:
                log.info("batch %s: endpoint %s is now named %s", entry.local, entry.endpoint, endpoint.name)
                entry.endpoint = endpoint.name
            if endpoint is not None:
                self.lanes.add(endpoint.name, entry.tokens)
        for entry in self.journal.entries.values():
            if not entry.open:
                self.poller.remove_files(entry)
        if self.journal.open_batches():
            log.info("%d batch(es) of an earlier run are open; collecting them", len(self.journal.open_batches()))

    def _loop(self) -> None:
        while not self._done():
            self._check_stop_file()
            if self.cfg.cancel_batches:
                self.submit.cancel_all()
            elif not self._stop:
                self.submit.advance_all()
                self.submit.fill()
            self.poller.poll_due()
            self._progress()
            self._tick()
            if not self._done():
                time.sleep(self._sleep_for())

    def _done(self) -> bool:
        if self._stop:
            return True
        if not self.lanes.usable(self.job.model) and self._has_work():
            raise RunAbortedError(f"no usable endpoint for model {self.job.model!r}: every key that serves it "
                                  "is rejected; open batches are kept in the journal, rerun to collect them")
        unreachable = self.submit.unreachable()
        if unreachable and not self._pollable():
            raise RunAbortedError(unreachable)
        return not self._has_work() or (self.cfg.cancel_batches and not self.journal.open_batches())

    def _has_work(self) -> bool:
        return bool(self.journal.open_batches() or self.retry_queue or not self.exhausted)

    def _pollable(self) -> bool:
        return any(self.lanes.find(e.key_hash) for e in self.journal.open_batches())

    def _sleep_for(self) -> float:
        due = [t for t in self.poller.polls.values()] or [time.monotonic() + self.cfg.batch_poll]
        return max(0.01, min(min(due) - time.monotonic(), 0.5))

    def _shutdown(self) -> None:
        try:
            self.job.writer.stop()
        finally:
            self.journal.close()
        self._progress(raise_errors=False)
        self.complete = (not self._stop and not self._has_work() and not self.cfg.cancel_batches
                         and not self._limited)
        ckpt = self.job.checkpoint
        ckpt.elapsed = self.elapsed()
        if self.complete:
            ckpt.clear()
            self.journal.clear()
        else:
            try:
                ckpt.save()
            except CheckpointError as err:
                log.error("%s (the output is intact; the next run rebuilds from it)", err)
        self.observer.tick(self.view("finished" if self.complete else "stopped"))

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._started

    # ---- rows ---------------------------------------------------------------------------------

    def next_row(self):
        """The next input row that needs a batch (bad rows go to the errors file on the way)."""
        while not self.exhausted:
            if self.cfg.limit is not None and self._taken >= self.cfg.limit:
                self.exhausted = self._limited = True
                return None
            entry = next(self.rows, None)
            if entry is None or isinstance(entry, Idle):
                self.exhausted = True
                return None
            if isinstance(entry, Blank):
                self.job.writer.add_mark(entry.key, entry.end_offset)
                continue
            if self.job.checkpoint.is_done(entry.key) or self.journal.owns(entry.key):
                continue
            self._taken += 1
            if isinstance(entry, BadRow):
                self.job.writer.add_error(entry.key, entry.end_offset, records.bad_row_record(entry))
                continue
            return entry
        return None

    # ---- status -------------------------------------------------------------------------------

    def _progress(self, raise_errors: bool = True) -> None:
        if self.job.writer.error is not None and raise_errors:
            raise self.job.writer.error   # disk full, permissions: the run stops, what is durable stays
        ck = self.job.checkpoint
        if ck.ok + ck.failed != self._counted:
            self._meter.add(time.monotonic(), ck.ok + ck.failed - self._counted)
            self._counted = ck.ok + ck.failed
            self.observer.durable(job_counts(self.jobs, self._before))

    def _check_stop_file(self) -> None:
        if self.status_file is not None and check_stop(self.status_file, os.getpid()) is not None:
            self._by_request = True
            self.request_stop("stop requested (--stop)")

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self.observer.tick(self.view("stopping" if self._stop else "running"))

    def view(self, state: str) -> RunView:
        """The facts of the run now, for `report/` (as the online `Runner.view`)."""
        batches = [{"local": e.local, "id": e.batch_id, "endpoint": e.endpoint, "state": e.state,
                    "status": e.status or e.state, "rows": len(e.keys), "counts": e.counts}
                   for e in self.journal.open_batches()]
        cache = {"cache": self.cache.figures(self.job)} if self.cache is not None else {}
        opened = len(self.journal.open_batches()) if self.journal.path.exists() else 0
        return RunView(
            run=self.cfg.name, state=state, input=self.cfg.input, output=str(self.job.writer.output_path),
            total=self.total, jobs=job_counts(self.jobs, self._before),
            in_flight=sum(b["rows"] for b in batches), retry_waiting=sum(len(k) for _, k in self.retry_queue),
            rows_per_s=self._meter.rpm(time.monotonic()) / 60.0, elapsed_s=self.elapsed(),
            round_s=time.monotonic() - self._started, already_done=self.already_done,
            started_at=self.started_at, endpoints=tuple(self.lanes.snapshot()), price_factor=self.cfg.batch_price,
            status_extra={"via": "batch", "batches": batches, **cache},
            summary_extra={"via": "batch", "batch_price_factor": self.cfg.batch_price,
                           "batches_created": self.submit.created, "batches_open": opened, **cache})


def _install_signals(stop):
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = lambda signum, frame: stop(signal.Signals(signum).name)
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)

