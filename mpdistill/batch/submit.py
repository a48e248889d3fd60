"""Turn rows into provider batches: pack, upload, journal `creating`, create, journal `created`.

A batch whose create may have happened (journaled `creating`, no id yet) is first looked for at
the provider by its marker, and created only if absent: a kill between `batches.create` and the
journal write never makes a second batch of the same rows.
"""
from __future__ import annotations

import logging
import time

from ..engine.request import build_request
from ..engine.worker import prepare
from ..errors import AuthError, CallError, RowError, TransientError
from ..outputs import records
from ..provider.client import make_client
from ..state.batches import BatchEntry
from . import calls, crash
from .lanes import key_hash
from .pack import Limits, Pack, body_of, meta_line, request_line

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")
_MIN_CALL_TIMEOUT_S = 300.0     # uploads of large batch files take a while


class Submitter:
    """The submitting half of the batch runner; `r` is the runner (journal, lanes, job, rows)."""

    def __init__(self, runner, spec) -> None:
        self.r = runner
        self.spec = spec
        self.limits = Limits(runner.cfg.batch_max_requests, runner.cfg.batch_max_bytes)
        self.created = 0
        self._clients: dict = {}
        self._not_before: dict[str, float] = {}
        self._held = None             # (key, line, meta, tokens) that did not fit the last batch
        self._cancel_sent: set[str] = set()

    def client(self, endpoint):
        if endpoint.name not in self._clients:
            self._clients[endpoint.name] = make_client(endpoint, max(self.r.cfg.timeout, _MIN_CALL_TIMEOUT_S))
        return self._clients[endpoint.name]

    def unreachable(self) -> str | None:
        """Why some open batches cannot be collected by this run (their key is not in it), or None."""
        lost = [e for e in self.r.journal.open_batches() if self.r.lanes.find(e.key_hash) is None]
        if not lost or not self.r.exhausted or self.r.retry_queue:
            return None
        names = ", ".join(sorted({e.endpoint for e in lost}))
        return (f"{len(lost)} open batch(es) ({', '.join(e.batch_id or e.local for e in lost[:5])}) were made "
                f"with the key of endpoint(s) {names}, which this run does not have: add that key back to "
                "collect them (they stay in the journal)")

    # ---- the steps of one batch ---------------------------------------------------------------

    def advance_all(self) -> None:
        for entry in self.r.journal.open_batches():
            if entry.state != "created":
                self._advance(entry)

    def _advance(self, entry: BatchEntry) -> None:
        endpoint = self.r.lanes.find(entry.key_hash)
        if endpoint is None or self._not_before.get(entry.local, 0) > time.monotonic():
            return
        if self.r.lanes.disabled(endpoint.name) and entry.state in ("packed", "uploaded"):
            self._move(entry)
            return
        api = self.client(endpoint)
        try:
            if entry.state == "packed":
                file_id = calls.upload(api, self.r.journal.input_file(entry))
                crash.point("after_upload")
                self.r.journal.uploaded(entry, file_id)
            if entry.state == "uploaded":
                self.r.journal.creating(entry)
                crash.point("before_create")
                self._create(entry, endpoint, api)
            elif entry.state == "creating":
                found = calls.find(api, entry.marker)
                if found is not None:
                    log.info("batch %s: found %s at the provider (created before the last run ended)",
                             entry.local, found.id)
                    self._created(entry, found.id)
                else:
                    self._create(entry, endpoint, api)
        except AuthError as err:
            self.r.lanes.disable(endpoint.name, f"HTTP {err.status}: key rejected")
            self._move(entry)
        except TransientError as err:
            log.warning("batch %s: %s; trying again in %.0f s", entry.local, err, self.r.cfg.batch_poll)
            self._not_before[entry.local] = time.monotonic() + self.r.cfg.batch_poll
        except CallError as err:
            log.error("batch %s refused by %s: %s; its rows go round again", entry.local, endpoint.name, err)
            self.r.poller.close(entry, list(entry.keys))

    def _create(self, entry: BatchEntry, endpoint, api) -> None:
        batch = calls.create(api, entry.file_id, entry.marker)
        self.created += 1
        self.r.lanes.count_create(endpoint.name)
        crash.point("after_create")
        self._created(entry, batch.id)

    def _created(self, entry: BatchEntry, batch_id: str) -> None:
        self.r.journal.created(entry, batch_id)
        self.r.poller.polls[entry.local] = time.monotonic() + self.r.cfg.batch_poll

    def _move(self, entry: BatchEntry) -> None:
        """A batch its (rejected) key never created goes to another endpoint, when one has room."""
        choice = self.r.lanes.choose(self.r.job.model)
        if choice is None:
            return
        endpoint = choice[0]
        self.r.lanes.remove(entry.endpoint, entry.tokens)
        self.r.journal.moved(entry, endpoint.name, key_hash(endpoint))
        self.r.lanes.add(endpoint.name, entry.tokens)
        log.warning("batch %s moves to endpoint %s", entry.local, endpoint.name)

    def cancel_all(self) -> None:
        """--cancel-batches: cancel what the provider runs; unsubmitted batches return their rows."""
        for entry in self.r.journal.open_batches():
            endpoint = self.r.lanes.find(entry.key_hash)
            if entry.state in ("packed", "uploaded") or endpoint is None:
                self.r.poller.close(entry, [], returned=list(entry.keys))
                continue
            api = self.client(endpoint)
            try:
                if entry.state == "creating":
                    found = calls.find(api, entry.marker)
                    if found is None:
                        self.r.poller.close(entry, [], returned=list(entry.keys))
                        continue
                    self._created(entry, found.id)
                if entry.batch_id not in self._cancel_sent:
                    calls.cancel(api, entry.batch_id)
                    self._cancel_sent.add(entry.batch_id)
                    self.r.poller.polls[entry.local] = 0.0
                    log.warning("batch %s (%s): cancel requested", entry.local, entry.batch_id)
            except CallError as err:
                log.warning("batch %s: cannot cancel (%s); trying again", entry.batch_id, err)

    # ---- packing ------------------------------------------------------------------------------

    def fill(self) -> None:
        """Pack and submit new batches while an endpoint has room and rows are waiting."""
        while self.r.retry_queue or not self.r.exhausted or self._held:
            choice = self.r.lanes.choose(self.r.job.model)
            if choice is None:
                return
            entry = self._pack(*choice)
            if entry is None:
                return
            self._advance(entry)

    def _pack(self, endpoint, room: int | None) -> BatchEntry | None:
        journal = self.r.journal
        local = journal.new_local()
        pack = Pack(journal.dir / f"{local}.jsonl", journal.dir / f"{local}.rows.jsonl", self.limits, room)
        for item in self._items():
            if not pack.fits(item[1], item[3]):
                self._held = item
                break
            pack.add(*item)
        if not pack.keys:
            pack.discard()
            return None
        pack.finish()
        entry = BatchEntry(local, endpoint.name, key_hash(endpoint), list(pack.keys), pack.tokens)
        journal.packed(entry)
        self.r.lanes.add(endpoint.name, pack.tokens)
        return entry

    def _items(self):
        """(key, request line, rows-file line, tokens): the held one, retries, then new input rows."""
        if self._held is not None:
            item, self._held = self._held, None
            yield item
        while self.r.retry_queue:
            yield from self._retries()
        while True:
            row = self.r.next_row()
            if row is None:
                return
            item = self._item(row)
            if item is not None:
                yield item

    def _retries(self):
        """The rows of the oldest closed batch that go round again, read back from its rows file."""
        import json
        entry, keys = self.r.retry_queue[0]
        with open(self.r.journal.rows_file(entry), "rb") as f:
            for raw in f:
                meta = json.loads(raw)
                if meta["key"] in keys and not self.r.job.checkpoint.is_done(meta["key"]):
                    keys.discard(meta["key"])
                    yield (meta["key"], request_line(meta["key"], meta["body"]), raw, _tokens(meta["body"]))
        self.r.retry_queue.popleft()
        self.r.poller.remove_files(entry)

    def _item(self, row):
        job = self.r.job
        request = build_request(job.model, job.params, job.system, row.request)
        cache_key = None
        if self.r.cache is not None:
            handled, cache_key = self.r.cache.answer(job, row)
            if handled:
                return None
        try:
            request = prepare(request, self.spec)
        except RowError as err:
            self._row_failed(row, err)
            return None
        body = body_of(request)
        line = request_line(row.key, body)
        if len(line) > self.limits.max_bytes:
            self._row_failed(row, RowError(f"line {row.key}: the request is {len(line)} bytes, more than a "
                                           f"batch may hold (--batch-max-bytes {self.limits.max_bytes})"))
            return None
        return (row.key, line, meta_line(row, body, cache_key), _tokens(body))

    def _row_failed(self, row, err) -> None:
        job = self.r.job
        job.writer.add_error(row.key, row.end_offset, records.error_record(
            row, err, model=job.model, attempts=0, history=[]))


def _tokens(body: dict) -> int:
    """Estimated tokens of a request: its text / 4 plus the answer's budget (as online mode reserves)."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or ())
    return chars // 4 + int(body.get("max_tokens") or body.get("max_completion_tokens") or 512)
