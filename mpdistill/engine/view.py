"""The facts of a run at one moment, as plain data: what `report/` turns into status, progress
and summary. Counts come from the jobs' checkpoints, the one count of durable rows."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .flights import InFlight
from .job import Job


@dataclass(frozen=True)
class JobCounts:
    """One job's durable rows: now, and when this round started."""

    alias: str
    output: str
    errors: str
    done: int
    ok: int
    failed: int
    ok_before: int = 0
    failed_before: int = 0
    prices: tuple | None = None

    @property
    def ok_now(self) -> int:
        """Rows answered and made durable in this round."""
        return self.ok - self.ok_before

    @property
    def failed_now(self) -> int:
        return self.failed - self.failed_before


@dataclass(frozen=True)
class RunView:
    """A snapshot of a run for status files, progress and the summary."""

    run: str
    state: str
    input: str | None
    output: str
    total: int | None           # rows × jobs, when known
    jobs: tuple[JobCounts, ...]
    in_flight: int = 0
    retry_waiting: int = 0
    rows_per_s: float = 0.0
    elapsed_s: float = 0.0      # over every run of this job
    round_s: float = 0.0        # this round only
    already_done: int = 0       # rows done when the round started
    started_at: float = 0.0
    iteration: int | None = None
    workers: tuple = ()
    endpoints: tuple = ()
    source: dict = field(default_factory=dict)
    status_extra: dict = field(default_factory=dict)    # mode-specific figures (cache, batches) …
    summary_extra: dict = field(default_factory=dict)   # … for the status file and for the summary
    price_factor: float = 1.0   # the jobs' prices are the model's × this (the Batch API's discount)
    pid: int = field(default_factory=os.getpid)
    updated_at: float = field(default_factory=time.time)

    @property
    def done(self) -> int:
        return sum(j.done for j in self.jobs)

    @property
    def ok(self) -> int:
        return sum(j.ok for j in self.jobs)

    @property
    def failed(self) -> int:
        return sum(j.failed for j in self.jobs)


def job_counts(jobs: list[Job], before: list[tuple[int, int]] | None = None) -> tuple[JobCounts, ...]:
    """Each job's counts from its checkpoint; `before` = (ok, failed) at the round's start."""
    before = before or [(0, 0)] * len(jobs)
    return tuple(JobCounts(j.alias, str(j.writer.output_path), str(j.writer.errors_path), j.checkpoint.processed_count,
                           j.checkpoint.ok, j.checkpoint.failed, *b, j.prices) for j, b in zip(jobs, before))


def workers(flights: InFlight, pids: list[tuple[int, int | None]]) -> tuple:
    """Per worker: its pid and the rows it is calling for, from the in-flight table."""
    out = []
    for slot, pid in pids:
        held = flights.on_slot(slot)
        out.append({"slot": slot, "pid": pid, "busy": bool(held), "rows": [f.item.row.id for f in held],
                    "since": min((f.sent_at for f in held), default=None)})
    return tuple(out)
