"""Rows into work: take rows from the source, turn each into one item per job not yet done.

Blank lines become marks (done once earlier rows are), bad rows become error rows at once, and
`--limit` counts the rows taken. Follow mode: an `Idle` from the source means "ask again later".
"""
from __future__ import annotations

import logging
from typing import Iterator

from ..inputs.rows import BadRow, Blank, Idle, Row
from ..outputs import records
from .job import Item, Job

log = logging.getLogger(__name__)


class Intake:
    """Reads the row stream of one round for every job."""

    def __init__(self, rows: Iterator, jobs: list[Job], *, limit: int | None,
                 iteration: int | None) -> None:
        self.rows = rows
        self.jobs = jobs
        self.limit = limit
        self.iteration = iteration
        self.taken = 0                 # rows taken from the source (for --limit)
        self.exhausted = False
        self.limited = False           # stopped reading at --limit: the input is not complete
        self.waiting_input = False     # --follow: nothing new to read right now

    def next_items(self) -> list[Item]:
        """The items of the next row some job still needs; [] when no row is to be had now."""
        while not self.exhausted:
            row = self._take_row()
            if row is None:
                return []
            items = [Item(row, i) for i, job in enumerate(self.jobs) if not job.checkpoint.is_done(row.key)]
            if items:
                return items
        return []

    def _take_row(self) -> Row | None:
        """The next usable row; bad rows and blank lines are recorded on the way."""
        while True:
            if self.limit is not None and self.taken >= self.limit:
                self.exhausted = self.limited = True
                return None
            entry = next(self.rows, None)
            if isinstance(entry, Idle):
                self.waiting_input = True   # --follow: nothing new yet; ask again next loop
                return None
            self.waiting_input = False
            if entry is None:
                self.exhausted = True
                return None
            if isinstance(entry, Blank):
                for job in self.jobs:
                    job.writer.add_mark(entry.key, entry.end_offset)
                continue
            self.taken += 1
            if isinstance(entry, BadRow):
                self._bad_row(entry)
                continue
            return entry

    def _bad_row(self, entry: BadRow) -> None:
        log.warning("bad row: %s", entry.reason)
        for job in self.jobs:
            if not job.checkpoint.is_done(entry.key):
                job.writer.add_error(entry.key, entry.end_offset, records.bad_row_record(entry, self.iteration))
