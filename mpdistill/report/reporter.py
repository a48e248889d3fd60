"""The run's reporter: hears the engine's facts and turns them into the status file, the progress
bar and the summary. The only place counts become words."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .progress import ProgressBar
from .stats import ModelStats
from .status import status_record, write_status
from .summary import build_summary, format_summary, summary_path, write_summary

log = logging.getLogger(__name__)


class Reporter:
    """The engine's observer for a whole run (every round): answers, durable rows, ticks, ends."""

    def __init__(self, aliases: list[str], outputs: list[Path], *, prices: list | None = None,
                 status_file: Path | None, progress: bool, announce: Callable[[str], None]) -> None:
        self.aliases = aliases
        self.outputs = [Path(o) for o in outputs]
        self.prices = prices or [None] * len(aliases)
        self.status_file = status_file
        self.progress = progress
        self.announce = announce
        self.summary_path = summary_path(self.outputs)
        self.summary: dict | None = None
        self._stats: list[ModelStats] = []
        self._bar: ProgressBar | None = None

    # ---- the engine's calls -----------------------------------------------------------------

    def say(self, message: str) -> None:
        """A line for the user (round numbers, waits)."""
        self.announce(message)

    def round_started(self, view) -> None:
        """A round begins: fresh figures and a bar that starts at the rows already done."""
        self._stats = [ModelStats(prices=p) for p in self.prices]
        self._bar = ProgressBar(view.total, view.done, self.progress)

    def answered(self, job: int, latency_s: float, usage: dict | None) -> None:
        self._stats[job].add(latency_s, usage)

    def durable(self, jobs) -> None:
        """Rows were made durable: `jobs` are every job's counts (`engine.view.JobCounts`)."""
        if self._bar is not None:
            self._bar.show(sum(j.ok_now for j in jobs), sum(j.failed_now for j in jobs))

    def tick(self, view) -> None:
        """About once a second, and once with the final state: rewrite the status file."""
        if self.status_file is None:
            return
        try:
            write_status(self.status_file, status_record(view))
        except OSError as err:
            log.warning("cannot write status file %s: %s", self.status_file, err)

    def round_ended(self, view, state: str) -> dict:
        """Close the bar, then write and announce the round's summary (the whole run, usually)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.summary = build_summary(view, dict(zip(self.aliases, self._stats)), state)
        write_summary(self.summary_path, self.summary)
        self.announce(format_summary(self.summary))
        if len(self.outputs) > 1:
            self.announce("Outputs: " + ", ".join(str(o) for o in self.outputs)
                          + f"  (summary: {self.summary_path})")
        else:
            self.announce(f"Output: {self.summary['output']}  (errors: {self.summary['errors']}, "
                          f"summary: {self.summary_path})")
        return self.summary
