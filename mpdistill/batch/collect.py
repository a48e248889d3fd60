"""Collect one finished batch: read its output and error files, write every answered row through
the job's writer (rows already done are skipped, so collecting twice writes nothing twice), send
failed requests to the errors file with the provider's reason, and say which rows go round again.

Memory is O(batch size): an index of the rows file (key -> offset), never the whole dataset.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RejectedError, TransientError
from ..engine import retry
from ..outputs import records
from ..provider.answer import completion_from_body, wants_json, with_extracted
from ..provider.status import error_for_status, status_detail
from ..state.batches import BatchEntry
from . import crash
from .pack import key_of, row_of

log = logging.getLogger(__name__)

_RETRY_CODES = ("batch_expired", "batch_cancelled")


@dataclass
class Outcome:
    """What collecting a batch came to."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0                       # answered before (an earlier, interrupted collection)
    retry: list[int] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)   # back to the input without using a retry


class Collector:
    """Turns one batch's result files into output and error lines of `job`."""

    def __init__(self, job, attempts: dict, max_retries: int, *, endpoint: str, batch_id: str,
                 turnaround_s: float, cancelled: bool = False, answered=None) -> None:
        self.job = job
        self.answered = answered        # (alias, latency, usage) of each answer, for the report
        self.attempts = attempts
        self.max_retries = max_retries
        self.endpoint = endpoint
        self.batch_id = batch_id
        self.turnaround = turnaround_s
        self.cancelled = cancelled      # --cancel-batches: unanswered rows return without a retry
        self.outcome = Outcome()

    def collect(self, entry: BatchEntry, rows_file: Path, output: Path | None, errors: Path | None,
                batch_reason: str | None) -> Outcome:
        index = _index(rows_file)
        with open(rows_file, "rb") as rows:
            for path in (output, errors):
                if path is not None:
                    self._results(path, index, rows)
            for key in list(index):
                missing = TransientError(batch_reason or f"batch {self.batch_id} returned no result for this request")
                missing.batch_code = None
                self._fail(key, _read_meta(rows, index.pop(key)), missing)
        self.job.writer.flush()
        return self.outcome

    def _results(self, path: Path, index: dict, rows) -> None:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    log.warning("batch %s: result line %d of %s is not JSON; skipped", self.batch_id, number, path.name)
                    continue
                key = key_of(line.get("custom_id")) if isinstance(line, dict) else None
                if key is None or key not in index:
                    continue  # not ours, or seen twice: the first result counts
                self._result(key, _read_meta(rows, index.pop(key)), line)
                if number % 2 == 0:
                    crash.point("downloading")

    def _result(self, key: int, meta: dict, line: dict) -> None:
        if self.job.checkpoint.is_done(key):
            self.outcome.skipped += 1
            return
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        error = line.get("error") if isinstance(line.get("error"), dict) else None
        if response is None or response.get("status_code") != 200:
            self._fail(key, meta, _line_error(response, error))
            return
        try:
            completion = completion_from_body(response.get("body"))
            if wants_json(meta["body"]):
                completion = with_extracted(completion)
        except TransientError as err:
            self._fail(key, meta, err)
            return
        self._succeeded(key, meta, completion)

    def _succeeded(self, key: int, meta: dict, completion) -> None:
        job, row = self.job, row_of(meta)
        attempts = self.attempts.get(key, 0) + 1
        record = records.result_record(row, completion, model=job.model, latency=self.turnaround,
                                       attempts=attempts, endpoint=self.endpoint)
        record["batch_id"] = self.batch_id
        job.writer.add_result(key, row.end_offset, records.with_samples(record, completion.samples, False))
        if self.answered is not None:
            self.answered(job.alias, self.turnaround, completion.usage)
        self.outcome.ok += 1

    def _fail(self, key: int, meta: dict, err) -> None:
        if self.job.checkpoint.is_done(key):
            self.outcome.skipped += 1
            return
        code = getattr(err, "batch_code", "status")
        if self.cancelled and code in _RETRY_CODES + (None,):
            self.outcome.returned.append(key)
            return
        attempts = self.attempts.get(key, 0) + 1
        decision = retry.decide(err, retry.Attempt(number=attempts, retries=attempts - 1),
                                retry.RetryPolicy(max_retries=self.max_retries, zero=True))
        if decision.action is not retry.Action.FAIL_ROW:
            (self.outcome.retry if decision.charged else self.outcome.returned).append(key)
            return
        row, job = row_of(meta), self.job
        history = [{"attempt": attempts, "endpoint": self.endpoint, "batch_id": self.batch_id,
                    "status": getattr(err, "status", None), "error": type(err).__name__,
                    "message": str(err)[:300], "retry_in_s": None}]
        job.writer.add_error(key, row.end_offset, records.error_record(
            row, err, model=job.model, attempts=attempts, history=history))
        self.outcome.failed += 1


def _line_error(response: dict | None, error: dict | None):
    """The error class of one failed request: by its HTTP status, else by the batch error code."""
    if response is not None and isinstance(response.get("status_code"), int):
        body = response.get("body") if isinstance(response.get("body"), dict) else {}
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        status = response["status_code"]
        return error_for_status(status, status_detail(status, detail.get("message") or "no message"))
    code = (error or {}).get("code")
    message = f"{code}: {(error or {}).get('message')}" if code else "the request has no response"
    err = TransientError(message) if code in _RETRY_CODES or code is None else RejectedError(message)
    err.batch_code = code
    return err


def _index(rows_file: Path) -> dict[int, int]:
    """Row key -> byte offset of its line in the rows file."""
    index, offset = {}, 0
    with open(rows_file, "rb") as f:
        for raw in f:
            key_end = raw.find(b",")
            index[int(raw[len(b'{"key":'):key_end])] = offset
            offset += len(raw)
    return index


def _read_meta(rows, offset: int) -> dict:
    rows.seek(offset)
    return json.loads(rows.readline())
