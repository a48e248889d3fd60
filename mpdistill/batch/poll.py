"""Polling the open batches of a batch-mode run: retrieve each when due, collect a finished one's
files through the run's writer, journal it closed and queue what goes round again.

Owned by `runner.BatchRunner` (`self.r`), whose journal, lanes, submitter, job and retry queue it uses.
"""
from __future__ import annotations

import logging
import os
import time

from ..errors import AuthError, CallError, TransientError
from . import calls, crash
from .collect import Collector
from .submit import TERMINAL

log = logging.getLogger(__name__)


class Poller:
    """When each open batch is polled next, and what polling one does."""

    def __init__(self, runner) -> None:
        self.r = runner
        self.polls: dict[str, float] = {}        # local -> next poll time


    def poll_due(self) -> None:
        now = time.monotonic()
        for entry in self.r.journal.open_batches():
            if entry.state != "created" or self.polls.get(entry.local, 0) > now:
                continue
            endpoint = self.r.lanes.find(entry.key_hash)
            if endpoint is None:
                continue  # reported by Submitter.unreachable
            self.polls[entry.local] = now + self.r.cfg.batch_poll
            try:
                batch = calls.retrieve(self.r.submit.client(endpoint), entry.batch_id)
            except CallError as err:
                self._failed(entry, err)
                continue
            crash.point("polling")
            entry.status = batch.status
            counts = batch.request_counts
            entry.counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} \
                if counts else {}
            if batch.status in TERMINAL:
                self._collect(entry, endpoint, batch)

    def _failed(self, entry, err: CallError) -> None:
        if isinstance(err, TransientError):
            log.warning("batch %s: poll failed (%s); trying again later", entry.batch_id, err)
            return
        if isinstance(err, AuthError):
            self.r.lanes.disable(entry.endpoint, f"HTTP {err.status}: key rejected")
            log.error("batch %s cannot be polled with its key any more (%s): its rows are submitted again "
                      "elsewhere; the provider may still run (and bill) it", entry.batch_id, err)
            self.close(entry, [], returned=list(entry.keys))
            return
        log.error("batch %s: %s; its rows go round again", entry.batch_id, err)
        self.close(entry, [k for k in entry.keys if not self.r.job.checkpoint.is_done(k)])

    def _collect(self, entry, endpoint, batch) -> None:
        """Download a finished batch's files and write its rows; then journal it closed."""
        api = self.r.submit.client(endpoint)
        files = {}
        for kind, file_id in (("out", batch.output_file_id), ("err", batch.error_file_id)):
            if file_id:
                try:
                    files[kind] = calls.download(api, file_id, self.r.journal.dir / f"{entry.local}.{kind}.jsonl")
                except CallError as err:
                    log.warning("batch %s: cannot download %s (%s); trying again later", entry.batch_id, file_id, err)
                    return
        reason = _batch_reason(batch)
        entry.errors = reason if batch.status == "failed" else None
        collector = Collector(self.r.job, self.r.journal.attempts, self.r.cfg.max_retries, endpoint=endpoint.name,
                              batch_id=entry.batch_id, turnaround_s=max(0.0, time.time() - (batch.created_at or 0)),
                              cancelled=batch.status == "cancelled" and bool(self.r.cfg.cancel_batches),
                              answered=self.r.observer.answered)
        outcome = collector.collect(entry, self.r.journal.rows_file(entry), files.get("out"), files.get("err"), reason)
        if self.r.cache is not None:
            self.r.cache.store_batch(self.r.job, files.get("out"), self.r.journal.rows_file(entry))
        log.info("batch %s (%s) %s: %d answered, %d failed, %d to resubmit", entry.local, entry.batch_id,
                 batch.status, outcome.ok, outcome.failed, len(outcome.retry))
        self.close(entry, outcome.retry, returned=outcome.returned)

    def close(self, entry, retry: list[int], returned: list[int] = ()) -> None:
        """Journal the batch closed; rows to retry (or returned: not the rows' fault) go round again.

        `retry` rows use up one of their retries; on a rerun both kinds come from the input again.
        """
        if self.r.lanes.find(entry.key_hash):
            self.r.lanes.remove(entry.endpoint, entry.tokens)
        self.r.journal.closed(entry, retry)
        self.polls.pop(entry.local, None)
        again = set(retry) | set(returned)
        if again:
            self.r.retry_queue.append((entry, again))
        else:
            self.remove_files(entry)

    def remove_files(self, entry) -> None:
        for suffix in (".jsonl", ".rows.jsonl", ".out.jsonl", ".err.jsonl"):
            try:
                os.unlink(self.r.journal.dir / f"{entry.local}{suffix}")
            except FileNotFoundError:
                pass


def _batch_reason(batch) -> str:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    detail = "; ".join(f"{e.code}: {e.message}" for e in data if e is not None)
    return f"batch {batch.id} {batch.status}" + (f" ({detail})" if detail else "")
